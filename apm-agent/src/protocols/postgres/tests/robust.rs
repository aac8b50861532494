//! Framing edge cases (splits, captures, mid-stream starts, garbage), server side, detection,
//! and robustness against random, split and truncated input.
use super::*;

#[test]
fn messages_split_across_segments() {
    let mut c = connected(Some("shop"));
    let q = query("SELECT name FROM users WHERE id = 1");
    for b in q.chunks(3) {
        c.send(b);
    }
    let resp = cat(&[
        row_desc(&["name"]),
        data_row(&[b"bob"]),
        complete("SELECT 1"),
        ready(),
    ]);
    for b in resp.chunks(2) {
        c.recv(b);
    }
    assert_eq!(
        c.summary(),
        vec![op(
            "SELECT",
            "SELECT name FROM users WHERE id = ?",
            Some("users"),
            None
        )]
    );
    // Starts with the first bytes of the Q, ends with the last bytes of the Z.
    let n_q = q.len().div_ceil(3) as u64;
    let n_r = resp.len().div_ceil(2) as u64;
    assert_eq!(c.times(), vec![(1205, 1205 + (n_q + n_r - 1) * 100)]);
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn data_rows_past_the_capture_are_skipped() {
    let mut c = connected(Some("shop"));
    c.send(&query("SELECT blob FROM files"));
    let big = vec![b'x'; 10_000];
    let rows = cat(&[row_desc(&["blob"]), data_row(&[&big]), data_row(&[&big])]);
    // Only 4096 bytes captured; one read moved all the rows.
    c.seg_total(IN, &rows[..4096], rows.len() as u64);
    c.recv(&cat(&[complete("SELECT 2"), ready()])); // 1405
    assert_eq!(
        c.summary(),
        vec![op("SELECT", "SELECT blob FROM files", Some("files"), None)]
    );
    assert_eq!(c.times(), vec![(1205, 1405)]);
    // Rows split across reads at arbitrary points, each read truncated.
    c.send(&query("SELECT blob FROM files"));
    let split = rows.len() / 2 + 3;
    c.seg_total(IN, &rows[..100], split as u64);
    c.seg_total(IN, &rows[split..split + 100], (rows.len() - split) as u64);
    c.recv(&cat(&[complete("SELECT 2"), ready()]));
    assert_eq!(c.out.done.len(), 2);
    assert_eq!(c.out.done[1].trust, Trust::default());
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn lost_reply_end_is_inferred_at_next_query() {
    let mut c = connected(Some("shop"));
    c.send(&query("SELECT blob FROM files"));
    // The CommandComplete and ReadyForQuery lie past the capture of a huge read.
    let mut resp = cat(&[row_desc(&["blob"]), data_row(&[&vec![b'x'; 9000]])]);
    resp.extend(cat(&[complete("SELECT 1"), ready()]));
    let total = resp.len() as u64 + 50; // the tail is unknown framing
    c.seg_total(IN, &resp[..4096], total); // 1300..1305
    c.send(&query("SELECT 2"));
    c.recv(&cat(&[complete("SELECT 1"), ready()]));
    assert_eq!(
        c.summary(),
        vec![
            op("SELECT", "SELECT blob FROM files", Some("files"), None),
            op("SELECT", "SELECT ?", None, None)
        ]
    );
    assert_eq!(c.out.done[0].end_ns, 1305);
    assert!(c.out.done[0].trust.contains(Trust::END_INFERRED));
    assert_eq!(c.out.done[1].trust, Trust::default());
}

#[test]
fn mid_stream_start_resyncs() {
    let mut c = Conn::client();
    // The first bytes seen are the middle of a DataRow stream answering an unseen query.
    let rows: Vec<u8> = (0..50)
        .flat_map(|i| data_row(&[format!("value-{i}").as_bytes(), b"\x00\x01\x02"]))
        .collect();
    c.recv(&rows[7..]);
    c.recv(&rows);
    c.recv(&cat(&[complete("SELECT 100"), ready()]));
    assert!(c.out.done.is_empty());
    c.send(&query("SELECT 1"));
    c.recv(&cat(&[complete("SELECT 1"), ready()]));
    assert_eq!(c.summary(), vec![op("SELECT", "SELECT ?", None, None)]);
    assert_eq!(c.seqs(), vec![0]);
    assert_eq!(c.stats.parse_errors, 0);
    assert_eq!(c.stats.unmatched_responses, 1);
    assert_eq!(namespace(&c, 0), None);
    assert!(!c.p.gave_up());
}

#[test]
fn mid_stream_execute_of_unseen_statement() {
    let mut c = Conn::client();
    c.send(&cat(&[bind("", "S_1", &["1"]), execute(""), sync()]));
    c.recv(&cat(&[bind_complete(), complete("SELECT 1"), ready()]));
    assert_eq!(c.summary(), vec![op("_OTHER", "", None, None)]);
}

#[test]
fn garbage_gives_up_without_panic() {
    let mut c = connected(Some("shop"));
    for _ in 0..5 {
        c.recv(b"\xde\xad\xbe\xef garbage that is no message at all");
    }
    assert!(c.p.gave_up());
    assert_eq!(c.stats.parse_errors, 1);
    c.send(&query("SELECT 1"));
    assert!(c.out.started.is_empty());
    // Negative and huge lengths are garbage too.
    for bad in [
        &b"Q\xff\xff\xff\xffSELECT"[..],
        b"Q\x7f\xff\xff\xff",
        b"Q\x00\x00\x00\x02",
    ] {
        let mut c = connected(None);
        c.send(bad);
        assert_eq!(c.stats.parse_errors, 1, "{bad:?}");
    }
}

#[test]
fn server_side() {
    let mut c = Conn::new(Side::Server);
    c.seg(IN, &startup(&[("user", "app"), ("database", "shop")]));
    c.seg(OUT, &cat(&[auth_ok(), ready()]));
    c.seg(IN, &query("SELECT * FROM users WHERE email = 'secret@x'")); // 1200..1205
    c.seg(
        OUT,
        &cat(&[
            row_desc(&["id"]),
            data_row(&[b"1"]),
            complete("SELECT 1"),
            ready(),
        ]),
    ); // 1305
    c.seg(
        IN,
        &cat(&[
            parse("", "SELECT 1"),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]),
    );
    c.seg(
        OUT,
        &cat(&[
            parse_complete(),
            bind_complete(),
            complete("SELECT 1"),
            ready(),
        ]),
    );
    assert_eq!(
        c.summary(),
        vec![
            op(
                "SELECT",
                "SELECT * FROM users WHERE email = ?",
                Some("users"),
                None
            ),
            op("SELECT", "SELECT ?", None, None),
        ]
    );
    assert_eq!(c.times(), vec![(1205, 1305), (1405, 1505)]);
    assert!(c.out.done.iter().all(|r| r.side == Side::Server));
    assert_eq!(namespace(&c, 1).as_deref(), Some("shop"));
    assert_eq!(c.stats, ParseStats::default());
}

#[test]
fn close_counts_pending_and_statement_map_is_bounded() {
    let mut c = connected(Some("shop"));
    let mut w = Vec::new();
    for i in 0..(MAX_STATEMENTS + 10) {
        w.extend(parse(&format!("s{i}"), "SELECT 1"));
    }
    c.send(&w);
    assert_eq!(c.p.named.statements.len(), MAX_STATEMENTS);
    assert_eq!(c.stats.pipeline_overflow, 10);
    c.send(&query("SELECT 1"));
    c.close();
    assert_eq!(c.stats.incomplete, 1);
    // Closing a statement frees its slot.
    let mut close = vec![b'S'];
    close.extend(z(b"s0"));
    c.send(&msg(b'C', &close));
    assert_eq!(c.p.named.statements.len(), MAX_STATEMENTS - 1);
}

#[test]
fn reply_with_nothing_pending_is_unmatched() {
    let mut c = connected(Some("shop"));
    c.recv(&cat(&[complete("SELECT 1"), ready()]));
    assert_eq!(c.stats.unmatched_responses, 1);
}

// ---- Detection ----

fn det(direction: Direction, data: &[u8]) -> Detected {
    PostgresParser::detect(&Segment {
        direction,
        data,
        total_len: data.len() as u64,
        ts_ns: 0,
        tid: 1,
    })
}

#[test]
fn detection() {
    let st = startup(&[("user", "app"), ("database", "shop")]);
    assert_eq!(det(OUT, &st), Detected::Side(Side::Client));
    assert_eq!(det(IN, &st), Detected::Side(Side::Server));
    assert_eq!(det(OUT, &ssl_request()), Detected::Side(Side::Client));
    assert_eq!(det(OUT, &st[..3]), Detected::Undecided);
    assert_eq!(det(OUT, b""), Detected::Undecided);
    assert_eq!(det(OUT, &query("SELECT 1")), Detected::Side(Side::Client));
    assert_eq!(det(IN, &query("SELECT 1")), Detected::Side(Side::Server));
    let ext = cat(&[
        parse("", "SELECT 1"),
        bind("", "", &[]),
        execute(""),
        sync(),
    ]);
    assert_eq!(det(OUT, &ext), Detected::Side(Side::Client));
    assert_eq!(det(OUT, &ext[..ext.len() - 1]), Detected::No);
    assert_eq!(det(OUT, b"Q\x00"), Detected::Undecided);
    // A Q whose length does not end at its NUL.
    assert_eq!(det(OUT, b"Q\x00\x00\x00\x0aSELECT 1\x00"), Detected::No);
    for other in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /a HTTP/1.1\r\n",
        b"DELETE /a HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"+OK\r\n",
        b"get key\r\n",
        b"set k 0 0 1\r\nx\r\n",
        b"STORED\r\n",
        b"END\r\n",
        b"\x4a\x00\x00\x00\x0a8.0.36\x00",
        b"\x21\x00\x00\x00\x03SELECT * FROM t WHERE a = 1",
        b"\x51\x00\x00\x00\x03SELECT 1",
    ] {
        assert_eq!(
            det(OUT, other),
            Detected::No,
            "{:?}",
            String::from_utf8_lossy(other)
        );
        assert_eq!(
            det(IN, other),
            Detected::No,
            "{:?}",
            String::from_utf8_lossy(other)
        );
    }
}

// ---- Robustness ----

/// Every golden stream of this file, as (direction on a client, bytes) chunks.
fn golden_streams() -> Vec<Vec<(Direction, Vec<u8>)>> {
    let hello = vec![
        (OUT, startup(&[("user", "app"), ("database", "shop")])),
        (
            IN,
            cat(&[auth_ok(), param_status("a", "b"), key_data(), ready()]),
        ),
    ];
    let mut simple = hello.clone();
    simple.push((OUT, query("SELECT * FROM t WHERE a = 'x'")));
    simple.push((
        IN,
        cat(&[
            row_desc(&["a"]),
            data_row(&[b"x"]),
            complete("SELECT 1"),
            ready(),
        ]),
    ));
    simple.push((OUT, query("SELECT * FROM nope")));
    simple.push((IN, cat(&[error("42P01"), ready()])));
    let mut ext = hello.clone();
    ext.push((
        OUT,
        cat(&[
            parse("s", "SELECT $1"),
            bind("", "s", &["1"]),
            execute(""),
            execute(""),
            sync(),
            parse("", "x"),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]),
    ));
    ext.push((
        IN,
        cat(&[
            parse_complete(),
            bind_complete(),
            complete("SELECT 1"),
            error("42601"),
            ready(),
            error("42601"),
            ready(),
        ]),
    ));
    let mut copy = hello;
    copy.push((OUT, query("COPY t FROM STDIN")));
    copy.push((IN, msg(b'G', &[0, 0, 0])));
    copy.push((OUT, cat(&[msg(b'd', b"1\n"), msg(b'c', b"")])));
    copy.push((IN, cat(&[complete("COPY 1"), ready()])));
    let ssl = vec![
        (OUT, ssl_request()),
        (IN, b"N".to_vec()),
        (OUT, startup(&[("user", "u")])),
        (IN, cat(&[auth_ok(), ready()])),
    ];
    vec![simple, ext, copy, ssl]
}

#[test]
fn golden_streams_in_one_piece() {
    let want = [2usize, 3, 1, 0];
    for (stream, n) in golden_streams().into_iter().zip(want) {
        let mut c = Conn::client();
        for (d, b) in &stream {
            c.seg(*d, b);
        }
        assert_eq!(c.out.done.len(), n);
        assert_eq!(c.stats.parse_errors, 0);
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn check(p: &PostgresParser) {
        assert!(p.pending.len() <= MAX_PENDING);
        assert!(p.named.statements.len() <= MAX_STATEMENTS);
        assert!(p.named.portals.len() <= MAX_STATEMENTS);
        assert!(p.readers.requests.buf.capacity() <= 2 * framing::MAX_KEEP + 64);
        assert!(p.readers.responses.buf.capacity() <= 2 * framing::MAX_KEEP + 64);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            segs in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300), 0u64..100_000), 0..20),
            server in any::<bool>(),
        ) {
            let mut c = Conn::new(if server { Side::Server } else { Side::Client });
            for (out, data, extra) in &segs {
                let d = if *out { OUT } else { IN };
                let _ = det(d, data);
                c.seg_total(d, data, data.len() as u64 + extra);
                check(&c.p);
            }
            c.close();
        }

        #[test]
        fn split_and_truncated_golden_streams_never_panic(
            which in 0usize..4,
            cuts in proptest::collection::vec(1usize..64, 1..40),
            caps in proptest::collection::vec(0usize..80, 1..40),
            flip in any::<u8>(),
            server in any::<bool>(),
        ) {
            let stream = golden_streams().swap_remove(which);
            let mut c = Conn::new(if server { Side::Server } else { Side::Client });
            let mut k = 0usize;
            for (i, (dir, bytes)) in stream.iter().enumerate() {
                // The server reads what the client writes.
                let dir = match (server, *dir) { (false, d) => d, (true, OUT) => IN, (true, _) => OUT };
                let mut bytes = bytes.clone();
                if i == 2 && !bytes.is_empty() {
                    let at = usize::from(flip) % bytes.len();
                    bytes[at] ^= flip;
                }
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let n = cuts[k % cuts.len()].min(rest.len());
                    let cap = caps[k % caps.len()].min(n);
                    k += 1;
                    let piece = &rest[..n];
                    let _ = det(dir, &piece[..cap]);
                    c.seg_total(dir, &piece[..cap], n as u64);
                    check(&c.p);
                    rest = &rest[n..];
                }
            }
            c.close();
            check(&c.p);
        }
    }
}
