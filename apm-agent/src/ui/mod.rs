//! The embedded web UI: server-rendered pages, no external assets (nothing leaves the host).
pub mod profiles;

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query-string value.
pub fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The page frame shared by all pages.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} - apm-agent</title>\
         <style>body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse}}td,th{{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}}\
         th{{background:#f4f4f4}}td.n{{text-align:right;font-variant-numeric:tabular-nums}}\
         nav a{{margin-right:1em}}object{{width:100%;min-height:600px;border:1px solid #ddd}}</style></head>\
         <body><nav><a href=\"/\">home</a><a href=\"/profiles\">profiles</a>\
         <a href=\"/api/routes\">routes</a><a href=\"/metrics\">metrics</a></nav><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(query_value("a b/c?&=é"), "a%20b%2Fc%3F%26%3D%C3%A9");
    }
}
