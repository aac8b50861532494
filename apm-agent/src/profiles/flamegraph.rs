//! Interactive SVG flame graphs (inferno: search, zoom, titles on hover).
use std::io::{self, Write};

use super::{folded, model::Profile};

/// Writes `profile` as an SVG flame graph.
pub fn write_svg(profile: &Profile, title: &str, out: &mut impl Write) -> io::Result<()> {
    let lines = folded::lines(profile);
    let total = profile.total();
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_owned();
    opts.subtitle = Some(format!(
        "{total} samples at {} Hz ({:.1} s of CPU)",
        profile.frequency_hz,
        total as f64 / profile.frequency_hz.max(1) as f64
    ));
    opts.count_name = "samples".to_owned();
    opts.font_size = 13;
    if lines.is_empty() {
        // inferno refuses empty input; say so in a valid SVG instead.
        return write!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"60\">\
             <text x=\"10\" y=\"35\" font-family=\"Verdana\" font-size=\"16\">{}: no samples</text></svg>",
            xml_escape(title)
        );
    }
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
        .map_err(io::Error::other)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
