//! Brendan Gregg's collapsed ("folded") stack format: `root;frame;leaf count` per line, the
//! input of inferno and flamegraph.pl, and what speedscope imports.
use std::io::{self, Write};

use super::model::Profile;

/// The folded lines of a profile, sorted.
pub fn lines(profile: &Profile) -> Vec<String> {
    profile
        .sorted()
        .into_iter()
        .map(|(stack, count)| {
            let names: Vec<String> = stack.iter().map(|f| f.display()).collect();
            format!("{} {count}", names.join(";"))
        })
        .collect()
}

pub fn write(profile: &Profile, out: &mut impl Write) -> io::Result<()> {
    for line in lines(profile) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::profiles::model::{Frame, FrameKind};

    /// Why folded text did not parse.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("line {line}: {reason}")]
    struct FoldedError {
        line: usize,
        reason: &'static str,
    }

    /// Parses folded text into (frames, count).
    fn parse(text: &str) -> Result<Vec<(Vec<String>, u64)>, FoldedError> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let err = |reason| FoldedError {
                    line: i + 1,
                    reason,
                };
                let (stack, count) = l.rsplit_once(' ').ok_or(err("no count"))?;
                let count = count
                    .trim()
                    .parse()
                    .map_err(|_| err("count is not a number"))?;
                if stack.is_empty() {
                    return Err(err("empty stack"));
                }
                Ok((stack.split(';').map(str::to_owned).collect(), count))
            })
            .collect()
    }

    fn frame(kind: FrameKind, name: &str) -> Arc<Frame> {
        Arc::new(Frame {
            kind,
            name: name.into(),
            module: None,
            build_id: None,
            offset: 0,
        })
    }

    #[test]
    fn round_trip_with_kernel_suffix() {
        let mut p = Profile::new(99, 0);
        let root = Arc::new(Frame::root("svc"));
        p.add(
            vec![
                root.clone(),
                frame(FrameKind::User, "main"),
                frame(FrameKind::User, "a;b"),
            ]
            .into(),
            3,
        );
        p.add(
            vec![
                root.clone(),
                frame(FrameKind::User, "main"),
                frame(FrameKind::Kernel, "do_syscall_64"),
            ]
            .into(),
            2,
        );
        p.add(
            vec![
                root,
                frame(FrameKind::User, "main"),
                frame(FrameKind::User, "a;b"),
            ]
            .into(),
            1,
        );
        let text = lines(&p).join("\n");
        assert_eq!(text, "svc;main;a:b 4\nsvc;main;do_syscall_64_[k] 2");
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed[1].0, vec!["svc", "main", "do_syscall_64_[k]"]);
        assert_eq!(parsed.iter().map(|p| p.1).sum::<u64>(), 6);
        assert!(parse("a;b").is_err());
        assert!(parse("a;b x").is_err());
    }
}
