//! The server's side of the exchange: greeting, auth results, and the response to the oldest
//! pending command (OK, ERR, EOF, result sets, prepared statement definitions).
use super::packets::{self, Meta};
use super::{
    DbSystem, Expect, Inner, MAX_COLUMNS, Outcome, ParseStats, ParserOut, Phase, Resp, SeqCheck,
};

impl Inner {
    pub(super) fn on_response(
        &mut self,
        m: Meta,
        p: &[u8],
        ts: u64,
        out: &mut ParserOut,
        stats: &mut ParseStats,
    ) -> Outcome {
        let first = p.first().copied();
        let eof_shaped = first == Some(0xfe) && m.len < u64::from(packets::MAX_PACKET);
        let status = packets::ok_or_eof_status(p, m.len);
        match self.phase {
            Phase::Start | Phase::HandshakeResponse
                if self.pending.is_empty() && m.first_seq == 0 =>
            {
                if let Some(g) = packets::parse_greeting(p) {
                    self.system = if g.mariadb {
                        DbSystem::Mariadb
                    } else {
                        DbSystem::Mysql
                    };
                    self.server_caps = Some(g.caps);
                    self.phase = Phase::HandshakeResponse;
                    return Outcome::Ok;
                }
                if first == Some(0xff) {
                    // Connection refused before the handshake.
                    return Outcome::Ok;
                }
            }
            Phase::Auth if self.pending.is_empty() => {
                if matches!(first, Some(0x00 | 0xff)) {
                    self.phase = Phase::Command;
                }
                return Outcome::Ok;
            }
            _ => {}
        }
        let Some(front) = self.pending.front() else {
            let expected_eof = self.maybe_eof.take();
            if eof_shaped && m.len < 9 && expected_eof == Some(m.first_seq) {
                self.deprecate_eof = Some(false);
                return Outcome::Ok;
            }
            stats.unmatched_responses += 1;
            return Outcome::Lost;
        };
        let expect = front.expect;
        let cmd_seq = front.cmd_seq;
        let prepare = front.prepare;
        let expected = match self.resp_seq {
            SeqCheck::FromCommand => Some(cmd_seq.wrapping_add(1)),
            SeqCheck::Expect(s) => Some(s),
            SeqCheck::Any => None,
        };
        if expected.is_some_and(|s| s != m.first_seq) {
            return Outcome::Error;
        }
        self.resp_seq = SeqCheck::Expect(m.last_seq.wrapping_add(1));
        let Some(first) = first else {
            // An empty or uncaptured payload where its kind matters.
            return match self.resp {
                Resp::Columns { .. } | Resp::Rows | Resp::Defs { .. } => {
                    self.resp_step(m, first, 0, ts, out)
                }
                _ => Outcome::Lost,
            };
        };
        if first == 0xff && !matches!(self.resp, Resp::Columns { .. } | Resp::Defs { .. }) {
            self.complete(ts, packets::err_code(p), out);
            return Outcome::Ok;
        }
        if self.resp == Resp::First {
            match expect {
                Expect::Results => match first {
                    0x00 | 0xfe => {
                        self.terminator(status, ts, out);
                    }
                    0xfb => {
                        self.resp = Resp::Infile;
                        self.resp_seq = SeqCheck::Any;
                    }
                    _ => {
                        let Some((n, size)) = packets::lenenc(p) else {
                            return Outcome::Error;
                        };
                        if n == 0 || n > MAX_COLUMNS {
                            return Outcome::Error;
                        }
                        // Optional metadata: a trailing `metadata_follows` byte of 0.
                        let no_metadata = m.len == size as u64 + 1 && p.get(size) == Some(&0);
                        self.resp = if no_metadata {
                            Resp::AfterColumns
                        } else {
                            Resp::Columns { left: n }
                        };
                    }
                },
                Expect::Prepare => {
                    if first != 0x00 || m.len < 12 {
                        return Outcome::Error;
                    }
                    let id = packets::u32_at(p, 1).unwrap_or(0);
                    let cols = u64::from(packets::u16_at(p, 5).unwrap_or(0));
                    let params = u64::from(packets::u16_at(p, 7).unwrap_or(0));
                    if prepare {
                        let st = front.statement.clone();
                        self.remember(id, st, stats);
                    }
                    if params > 0 {
                        self.resp = Resp::Defs {
                            left: params,
                            eof_next: false,
                            then: cols,
                        };
                    } else {
                        self.next_group(cols, ts, out);
                    }
                }
                Expect::Rows => {
                    self.resp = Resp::Rows;
                    return self.resp_step(m, Some(first), status, ts, out);
                }
                Expect::Single => self.complete(ts, None, out),
                Expect::Auth => {
                    self.resp = Resp::Auth;
                    self.resp_seq = SeqCheck::Any;
                    return self.resp_step(m, Some(first), status, ts, out);
                }
            }
            return Outcome::Ok;
        }
        self.resp_step(m, Some(first), status, ts, out)
    }

    /// A response packet after the first one.
    fn resp_step(
        &mut self,
        m: Meta,
        first: Option<u8>,
        status: u16,
        ts: u64,
        out: &mut ParserOut,
    ) -> Outcome {
        let eof_shaped = first == Some(0xfe) && m.len < u64::from(packets::MAX_PACKET);
        match self.resp {
            Resp::First => Outcome::Ok,
            Resp::Columns { left } => {
                // Column definitions start with the catalog, "def".
                if first.is_some_and(|b| b != 0x03) {
                    return Outcome::Error;
                }
                let left = left.saturating_sub(1);
                self.resp = if left == 0 {
                    Resp::AfterColumns
                } else {
                    Resp::Columns { left }
                };
                Outcome::Ok
            }
            Resp::AfterColumns => {
                if eof_shaped && m.len < 7 {
                    self.deprecate_eof = Some(false);
                    if status & packets::SERVER_STATUS_CURSOR_EXISTS != 0 {
                        self.complete(ts, None, out);
                    } else {
                        self.resp = Resp::Rows;
                    }
                } else if eof_shaped {
                    self.deprecate_eof = Some(true);
                    self.terminator(status, ts, out);
                } else {
                    if first.is_some() {
                        self.deprecate_eof = Some(true);
                    }
                    self.resp = Resp::Rows;
                }
                Outcome::Ok
            }
            Resp::Rows => {
                if eof_shaped {
                    self.terminator(status, ts, out);
                }
                Outcome::Ok
            }
            Resp::Defs {
                left,
                eof_next,
                then,
            } => {
                if left > 0 {
                    if first.is_some_and(|b| b != 0x03) {
                        return Outcome::Error;
                    }
                    let left = left - 1;
                    self.resp = Resp::Defs {
                        left,
                        eof_next,
                        then,
                    };
                    if left == 0 {
                        self.after_group(m.last_seq, ts, out);
                    }
                    return Outcome::Ok;
                }
                if eof_next && eof_shaped && m.len < 9 {
                    self.deprecate_eof = Some(false);
                    self.next_group(then, ts, out);
                    return Outcome::Ok;
                }
                // No EOF after the group after all: the next group starts here.
                if then == 0 || first.is_none() {
                    return Outcome::Error;
                }
                self.deprecate_eof = Some(true);
                self.next_group(then, ts, out);
                self.resp_step(m, first, status, ts, out)
            }
            Resp::Auth => {
                if first == Some(0x00) {
                    self.complete(ts, None, out);
                }
                Outcome::Ok
            }
            Resp::Infile => {
                if first == Some(0x00) {
                    self.complete(ts, None, out);
                    Outcome::Ok
                } else {
                    Outcome::Error
                }
            }
        }
    }

    /// A group of prepared statement definitions ended.
    fn after_group(&mut self, last_seq: u8, ts: u64, out: &mut ParserOut) {
        let Resp::Defs { then, .. } = self.resp else {
            return;
        };
        match self.deprecate_eof {
            Some(true) => self.next_group(then, ts, out),
            Some(false) => {
                self.resp = Resp::Defs {
                    left: 0,
                    eof_next: true,
                    then,
                }
            }
            None if then > 0 => {
                self.resp = Resp::Defs {
                    left: 0,
                    eof_next: true,
                    then,
                }
            }
            None => {
                // Whether an EOF follows is unknown: done now, and swallow one if it comes.
                self.complete(ts, None, out);
                self.maybe_eof = Some(last_seq.wrapping_add(1));
            }
        }
    }

    /// Starts the next group of `n` definitions (none: the prepare response is complete).
    fn next_group(&mut self, n: u64, ts: u64, out: &mut ParserOut) {
        if n == 0 {
            self.complete(ts, None, out);
        } else {
            self.resp = Resp::Defs {
                left: n,
                eof_next: false,
                then: 0,
            };
        }
    }

    /// The final OK/EOF of a result: another result follows, or the command is complete.
    fn terminator(&mut self, status: u16, ts: u64, out: &mut ParserOut) {
        if status & packets::SERVER_MORE_RESULTS_EXISTS != 0 {
            self.resp = Resp::First;
        } else {
            self.complete(ts, None, out);
        }
    }
}
