//! Lost and reordered records through the whole hot path: kernel records with their
//! per-socket numbers in, RED series and the agent's own counters out.
use apm_common::{ConnEvent, DataEventHeader, direction, kind, role, syscall};

use super::*;
use crate::{
    discovery::selectors::Selectors,
    ebpf::records,
    metrics::{db::DbConfig, red::RedConfig},
    protocols::Direction,
    request::Side,
};

/// A pid no test process has: the service is named from the `comm` of the open event.
const TGID: u32 = 4_100_000;
const FD: u32 = 9;

const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

struct Harness {
    pipeline: Pipeline,
    red: Red,
    published: Published,
}

impl Harness {
    /// A server connection accepted while the agent runs (so numbered from its first record).
    fn server() -> Self {
        let published = Published::default();
        let mut h = Self {
            pipeline: Pipeline::new(
                PipelineConfig {
                    detect_attempts: 4,
                    idle_timeout_ns: 10_000_000_000,
                    max_connections: 100,
                    max_processes: 100,
                    max_inventory_processes: 100,
                    exec_names_per_sec: 0,
                    selectors: Selectors::default(),
                    tracing: None,
                    metrics: None,
                    n_plus_one_threshold: 10,
                },
                published.clone(),
            ),
            red: Red::new(RedConfig {
                apdex_threshold_ns: 100_000_000,
                max_services: 10,
                max_routes_per_service: 100,
                max_series: 100,
                max_peers: 10,
                max_route_windows: 100,
                db: DbConfig {
                    max_series: 100,
                    max_names: 100,
                    max_statements_per_service: 100,
                },
            }),
            published,
        };
        let mut comm = [0u8; 16];
        comm[..8].copy_from_slice(b"testserv");
        h.pipeline.handle(
            Event::ConnOpen(ConnEvent {
                kind: kind::CONN_OPEN,
                tgid: TGID,
                tid: TGID,
                fd: FD,
                role: role::SERVER,
                ts_ns: 500,
                id: 500,
                comm,
                ..Default::default()
            }),
            &mut h.red,
        );
        h
    }

    /// Record number `seq` of the connection, returned by a syscall at `ts_ns`.
    fn record(&mut self, seq: u32, ts_ns: u64, dir: Direction, payload: &[u8]) {
        let header = DataEventHeader {
            kind: kind::DATA,
            direction: match dir {
                Direction::Ingress => direction::INGRESS,
                Direction::Egress => direction::EGRESS,
            },
            tgid: TGID,
            tid: TGID,
            fd: FD,
            syscall: syscall::READ,
            ts_ns,
            total_len: payload.len() as u64,
            captured_len: payload.len() as u32,
            seq,
        };
        let event = Event::Data(DataEvent {
            header,
            direction: match dir {
                Direction::Ingress => records::Direction::Ingress,
                Direction::Egress => records::Direction::Egress,
            },
            payload,
        });
        self.pipeline.handle(event, &mut self.red);
    }

    fn end_batch(&mut self) {
        self.pipeline.end_batch(&mut self.red);
    }

    /// (route, count, sum of durations in ns) of every server series, sorted.
    fn server_series(&self) -> Vec<(String, u64, u128)> {
        let mut v: Vec<(String, u64, u128)> = self
            .red
            .series()
            .iter()
            .filter(|(k, _)| k.side == Side::Server)
            .map(|(k, s)| {
                let route = self.red.service(k.service).routes.name(k.route).to_owned();
                (route, s.count, s.sum_ns)
            })
            .collect();
        v.sort();
        v
    }

    /// (resyncs, incomplete exchanges) of HTTP/1, as published.
    fn http1_counters(&mut self) -> (u64, u64) {
        self.pipeline.publish();
        let c = &self.published.protocols.protocols[Protocol::Http1.index()];
        (c.resyncs.load(Relaxed), c.incomplete.load(Relaxed))
    }
}

const IN: Direction = Direction::Ingress;
const OUT: Direction = Direction::Egress;

/// Keep-alive: A, its response, B, [B's response lost], C, its response. C pairs with C
/// (without the record numbers, C's response paired with B's request: a duration from B's
/// request to C's response, under B's route), B is written off, the reset is counted. Run
/// with the missing record's successor released by the next record and by the batch end.
#[test]
fn lost_response_does_not_shift_pairing() {
    for batch_end_between in [false, true] {
        let mut h = Harness::server();
        h.record(1, 1_000, IN, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        h.record(2, 2_000, OUT, OK_5);
        h.record(3, 10_000, IN, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        // 4: B's response, lost in the kernel (ring buffer full).
        h.record(5, 1_000_000, IN, b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
        if batch_end_between {
            h.end_batch();
        }
        h.record(6, 1_000_300, OUT, OK_5);
        h.end_batch();
        assert_eq!(
            h.server_series(),
            vec![("/a".to_owned(), 1, 1_000), ("/c".to_owned(), 1, 300)],
            "batch end between: {batch_end_between}"
        );
        assert_eq!(h.http1_counters(), (1, 1));
    }
}

/// Records lost in the middle of a response body: the rest of the body is not taken for a
/// message, the next exchange pairs with its own response (without the numbers, the body's
/// length swallowed the next response and nothing more was recorded on the connection).
#[test]
fn gap_inside_a_body_resyncs_at_the_next_message() {
    let mut h = Harness::server();
    h.record(1, 1_000, IN, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n".to_vec();
    head.extend_from_slice(&[b'x'; 1000]);
    h.record(2, 2_000, OUT, &head);
    // 3 and 4: 1000 and 500 bytes of the body, lost.
    h.record(5, 3_000, OUT, &[b'x'; 500]);
    h.record(6, 50_000, IN, b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    h.record(7, 50_700, OUT, OK_5);
    h.record(8, 60_000, IN, b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    h.record(9, 60_100, OUT, OK_5);
    h.end_batch();
    assert_eq!(h.server_series(), vec![("/next".to_owned(), 2, 800)]);
    // /big never completed: written off at the reset.
    assert_eq!(h.http1_counters(), (1, 1));
}

/// The same with one record missing in the body: the record after the gap is held back,
/// then released (with the reset) by the next request.
#[test]
fn one_lost_body_record_is_a_loss_not_a_swap() {
    let mut h = Harness::server();
    h.record(1, 1_000, IN, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n".to_vec();
    head.extend_from_slice(&[b'x'; 1000]);
    h.record(2, 2_000, OUT, &head);
    // 3: 500 bytes of the body, lost.
    h.record(4, 3_000, OUT, &[b'x'; 500]);
    h.record(5, 50_000, IN, b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
    h.record(6, 50_700, OUT, OK_5);
    h.end_batch();
    assert_eq!(h.server_series(), vec![("/next".to_owned(), 1, 700)]);
    assert_eq!(h.http1_counters(), (1, 1));
}

/// Two records swapped between CPUs (4 reaches the ring buffer before 3): put back in order,
/// no reset, every exchange paired with its own response. Then a record far behind the
/// newest (a late duplicate number) does not reset either.
#[test]
fn reordered_records_do_not_reset() {
    let mut h = Harness::server();
    h.record(1, 1_000, IN, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    h.record(2, 1_100, OUT, OK_5);
    h.record(4, 2_400, OUT, OK_5);
    h.record(3, 2_000, IN, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    h.record(5, 3_000, IN, b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
    h.record(6, 3_050, OUT, OK_5);
    // Behind the newest (6): fed, not taken for a loss.
    h.record(2, 4_000, IN, b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n");
    h.record(7, 4_010, OUT, OK_5);
    h.end_batch();
    assert_eq!(
        h.server_series(),
        vec![
            ("/a".to_owned(), 1, 100),
            ("/b".to_owned(), 1, 400),
            ("/c".to_owned(), 1, 50),
            ("/d".to_owned(), 1, 10),
        ]
    );
    assert_eq!(h.http1_counters(), (0, 0));
}

/// A connection whose first records were lost (its first number is not 1) is treated like
/// one seen mid-stream: it may start inside a message, so detection gets several segments.
#[test]
fn lost_first_records_allow_mid_stream_detection() {
    let mut h = Harness::server();
    // 1: the request head, lost; 2: the end of its body (not a message start).
    h.record(2, 1_000, IN, b"ody of the first request");
    h.record(3, 2_000, OUT, OK_5);
    h.record(4, 3_000, IN, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    h.record(5, 3_200, OUT, OK_5);
    h.end_batch();
    assert_eq!(h.server_series(), vec![("/b".to_owned(), 1, 200)]);
}
