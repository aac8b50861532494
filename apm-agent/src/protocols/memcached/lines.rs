//! The memcached text protocol's lines: the command table, command and response lines
//! parsed into what the parser needs (the operation, whether a data block follows, whether a
//! response will come), nothing of keys or values kept.
/// Longest unknown command word still taken for a command (reported as `_OTHER`).
const MAX_OTHER_WORD: usize = 32;

/// How a command's arguments are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// At least this many arguments (keys and others), optional `noreply`.
    Args(usize),
    /// `<key> <flags> <exptime> <bytes> [noreply]` (or with `<cas>` before `noreply` when
    /// true), then a data block.
    Storage { cas: bool },
    /// No response at all.
    Quit,
    /// Meta command: `<key> <flags>*`, `q` = quiet mode.
    Meta,
    /// `ms <key> <datalen> <flags>*`, then a data block.
    MetaSet,
}

pub(super) const COMMANDS: &[(&str, Shape)] = &[
    ("get", Shape::Args(1)),
    ("gets", Shape::Args(1)),
    ("gat", Shape::Args(2)),
    ("gats", Shape::Args(2)),
    ("set", Shape::Storage { cas: false }),
    ("add", Shape::Storage { cas: false }),
    ("replace", Shape::Storage { cas: false }),
    ("append", Shape::Storage { cas: false }),
    ("prepend", Shape::Storage { cas: false }),
    ("cas", Shape::Storage { cas: true }),
    ("delete", Shape::Args(1)),
    ("incr", Shape::Args(2)),
    ("decr", Shape::Args(2)),
    ("touch", Shape::Args(2)),
    ("flush_all", Shape::Args(0)),
    ("version", Shape::Args(0)),
    ("stats", Shape::Args(0)),
    ("verbosity", Shape::Args(1)),
    ("quit", Shape::Quit),
    ("mg", Shape::Meta),
    ("md", Shape::Meta),
    ("ma", Shape::Meta),
    ("me", Shape::Meta),
    ("ms", Shape::MetaSet),
    ("mn", Shape::Args(0)),
    ("shutdown", Shape::Args(0)),
    ("cache_memlimit", Shape::Args(1)),
];

pub(super) fn lookup(word: &[u8]) -> Option<(&'static str, Shape)> {
    COMMANDS
        .iter()
        .find(|(name, _)| name.as_bytes() == word)
        .copied()
}

/// Bytes allowed in a command line: printable, keys may hold non-ASCII bytes.
pub(super) fn line_byte(b: u8) -> bool {
    b >= b' ' && b != 0x7f
}

pub(super) fn number(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() || tok.len() > 20 || !tok.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(tok).ok()?.parse().ok()
}

/// A parsed command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cmd {
    pub(super) op: &'static str,
    pub(super) has_args: bool,
    /// Length of the data block that follows (without its `\r\n`).
    pub(super) data: Option<u64>,
    /// `noreply` or `quit`: no response will come.
    pub(super) no_response: bool,
    /// Meta quiet mode: the response may be left out.
    pub(super) quiet: bool,
    /// The line ran past the captured bytes.
    pub(super) truncated: bool,
}

/// Parses a command line (without its line end). `strict`: only known commands.
pub(super) fn parse_command(line: &[u8], strict: bool) -> Option<Cmd> {
    if !line.iter().all(|&b| line_byte(b)) {
        return None;
    }
    let mut toks = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let word = toks.next()?;
    let args = toks;
    let nargs = args.clone().count();
    let noreply = args.clone().next_back() == Some(b"noreply".as_slice());
    let mut cmd = Cmd {
        op: "_OTHER",
        has_args: nargs > 0,
        data: None,
        no_response: false,
        quiet: false,
        truncated: false,
    };
    let Some((op, shape)) = lookup(word) else {
        let wordy = word.len() <= MAX_OTHER_WORD
            && word.iter().all(|&b| b.is_ascii_lowercase() || b == b'_');
        return (!strict && wordy).then_some(cmd);
    };
    cmd.op = op;
    match shape {
        Shape::Args(min) => {
            if nargs < min {
                return None;
            }
            cmd.no_response = noreply;
        }
        Shape::Storage { cas } => {
            let need = if cas { 5 } else { 4 };
            if nargs != need && !(nargs == need + 1 && noreply) {
                return None;
            }
            cmd.data = Some(number(args.clone().nth(3)?)?);
            cmd.no_response = noreply;
        }
        Shape::Quit => cmd.no_response = true,
        Shape::Meta | Shape::MetaSet => {
            if nargs < 1 {
                return None;
            }
            if shape == Shape::MetaSet {
                cmd.data = Some(number(args.clone().nth(1)?)?);
            }
            cmd.quiet = args.clone().any(|t| t == b"q");
        }
    }
    Some(cmd)
}

/// A command line cut by the capture: its known word and that it has arguments.
pub(super) fn parse_truncated(line: &[u8]) -> Option<Cmd> {
    let sp = line.iter().position(|&b| b == b' ')?;
    let (op, _) = lookup(line.get(..sp)?)?;
    line.iter().all(|&b| line_byte(b)).then_some(Cmd {
        op,
        has_args: true,
        data: None,
        no_response: false,
        quiet: false,
        truncated: true,
    })
}

/// A parsed response line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resp {
    /// `VALUE <key> <flags> <bytes> [<cas>]`: an item of a retrieval, data follows.
    Value(u64),
    /// `VA <size> <flags>*`: a meta response with data; it ends with its data.
    Va(u64),
    /// `STAT ...` / `ITEM ...`: a line of a multi-line response.
    Item,
    /// `END`: the end of a multi-line response (or a miss).
    End,
    /// `MN`: meta no-op, the end of a batch of quiet commands.
    Mn,
    /// A one-line response, with the error word if it is one.
    Done(Option<&'static str>),
}

pub(super) fn parse_response(line: &[u8]) -> Option<Resp> {
    let mut toks = line.split(|&b| b == b' ');
    let word = toks.next()?;
    let mut args = toks.filter(|t| !t.is_empty());
    Some(match word {
        b"VALUE" => Resp::Value(number(args.nth(2)?)?),
        b"VA" => Resp::Va(number(args.next()?)?),
        b"STAT" | b"ITEM" => Resp::Item,
        b"END" => Resp::End,
        b"MN" => Resp::Mn,
        b"STORED" | b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND" | b"DELETED" | b"TOUCHED" | b"OK"
        | b"RESET" | b"VERSION" | b"HD" | b"EN" | b"NF" | b"NS" | b"EX" | b"ME" => Resp::Done(None),
        b"ERROR" => Resp::Done(Some("ERROR")),
        b"CLIENT_ERROR" => Resp::Done(Some("CLIENT_ERROR")),
        b"SERVER_ERROR" => Resp::Done(Some("SERVER_ERROR")),
        w if number(w).is_some() => Resp::Done(None),
        _ => return None,
    })
}
