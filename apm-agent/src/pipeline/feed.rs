//! Feeding one data record to its connection: the selectors' decision at its first data,
//! protocol detection (joining undecided first bytes), then its parser.
use std::sync::atomic::Ordering::Relaxed;

use super::{MAX_DETECT_PREFIX, Pipeline, conn_ref, key, record::Origin};
use crate::{
    conn::{ConnState, Connection, Prefix},
    ebpf::decode::{DataEvent, comm_str},
    metrics::red::Red,
    protocols::{Detection, Parser, Segment},
};

impl Pipeline {
    /// Feeds one data record, in order, to its connection: detection, then its parser.
    pub(super) fn feed(&mut self, d: &DataEvent<'_>, red: &mut Red) {
        let h = &d.header;
        let now = h.ts_ns;
        let conn = match self
            .conns
            .get_or_insert_with(h.tgid, h.fd, || Connection::new(0, None, [0; 16], now))
        {
            Ok(conn) => conn,
            Err(_) => {
                self.published
                    .pipeline
                    .connections_overflow
                    .fetch_add(1, Relaxed);
                self.ops.mute.push((key(h.tgid, h.fd), 0));
                return;
            }
        };
        conn.last_activity_ns = now;
        if matches!(conn.state, ConnState::Detecting { attempts: 0, .. }) {
            // A connection's first data: its endpoints are known now (the tuple event came
            // just before), so the selectors can decide it.
            let ports = match conn.endpoints {
                Some(e) => [e.local.port(), e.remote.port()],
                None => [0, conn.peer.map_or(0, |p| p.port())],
            };
            if !self
                .selection
                .connection_observed(&mut self.procs, h.tgid, &conn.comm, ports)
            {
                conn.state = ConnState::Ignored;
                self.ops.mute.push((key(h.tgid, h.fd), conn.id));
                return;
            }
        }
        let seg = Segment {
            direction: d.direction.into(),
            data: d.payload,
            total_len: h.total_len,
            ts_ns: h.ts_ns,
            tid: h.tid,
        };
        if matches!(conn.state, ConnState::Detecting { attempts: 0, .. }) {
            // A connection's first data: name its process now, while it surely runs (a
            // forked child serving one inherited connection may be gone by the time its
            // first exchange completes, and it never exec'd, so no exec event named it).
            self.procs.get_or_resolve(h.tgid, comm_str(&conn.comm));
        }
        let give_up = match &mut conn.state {
            ConnState::Detecting { attempts, prefix } => {
                // Bytes an earlier segment left undecided, read or written the same way, are
                // joined to this one: a client that reads a message's header apart from its
                // body (MySQL clients read 4 bytes, then the rest) is recognised all the same.
                let joined = match prefix.take() {
                    Some(p) if p.direction == seg.direction => {
                        let mut bytes = p.bytes;
                        bytes.extend_from_slice(seg.data);
                        Some((bytes, p.ts_ns, p.tid))
                    }
                    _ => None,
                };
                let joined_seg = joined.as_ref().map(|(bytes, ts_ns, tid)| Segment {
                    direction: seg.direction,
                    data: bytes,
                    total_len: (bytes.len() - seg.data.len()) as u64 + seg.total_len,
                    ts_ns: *ts_ns,
                    tid: *tid,
                });
                let seg = joined_seg.as_ref().unwrap_or(&seg);
                match Parser::detect(seg) {
                    Detection::Match(mut parser) => {
                        parser.on_segment(
                            seg,
                            &mut self.out,
                            &mut self.stats[parser.protocol().index()],
                        );
                        conn.state = ConnState::Parsing(parser);
                        false
                    }
                    detection => {
                        *attempts = attempts.saturating_add(1);
                        if matches!(detection, Detection::Undecided)
                            && !seg.is_truncated()
                            && seg.data.len() <= MAX_DETECT_PREFIX
                        {
                            *prefix = Some(Box::new(Prefix {
                                direction: seg.direction,
                                bytes: seg.data.to_vec(),
                                ts_ns: seg.ts_ns,
                                tid: seg.tid,
                            }));
                        }
                        // A connection seen from its open is decided on its first bytes; one
                        // first seen mid-stream (opened before the agent started: id 0, or its
                        // first records lost) may start inside a message, so it gets a few
                        // segments to show a message start.
                        let allowed = if conn.id == 0 || !conn.whole {
                            self.cfg.detect_attempts
                        } else {
                            1
                        };
                        let done = (matches!(detection, Detection::NoMatch)
                            && *attempts >= allowed)
                            || *attempts >= self.cfg.detect_attempts;
                        if done {
                            self.published
                                .pipeline
                                .unclassified_connections
                                .fetch_add(1, Relaxed);
                        }
                        done
                    }
                }
            }
            ConnState::Parsing(parser) => {
                parser.on_segment(
                    &seg,
                    &mut self.out,
                    &mut self.stats[parser.protocol().index()],
                );
                if parser.gave_up() {
                    parser.on_close(
                        now,
                        &mut self.out,
                        &mut self.stats[parser.protocol().index()],
                    );
                    true
                } else {
                    false
                }
            }
            ConnState::Ignored => false,
        };
        if give_up {
            conn.state = ConnState::Ignored;
            self.ops.mute.push((key(h.tgid, h.fd), conn.id));
        }
        let cref = conn_ref(h.tgid, h.fd, conn);
        let origin = Origin {
            conn: &cref,
            peer: conn.peer,
            comm: &conn.comm,
        };
        self.consumers.record(
            &mut self.procs,
            &mut self.stats,
            red,
            &origin,
            &mut self.out,
        );
    }
}
