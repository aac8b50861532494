//! Random bytes, random splits and truncations of golden streams: never a panic.
use super::*;
use proptest::prelude::*;

fn golden() -> Vec<(Direction, Vec<u8>)> {
    let mut prep_ok = vec![0x00];
    prep_ok.extend_from_slice(&9u32.to_le_bytes());
    prep_ok.extend_from_slice(&[1, 0, 1, 0, 0, 0, 0]);
    vec![
        (IN, greeting("5.5.5-10.11.6-MariaDB", 0xffff_ffff)),
        (OUT, handshake_response(CAPS_BASE | WITH_DB, Some("shop"))),
        (IN, ok(2, 2)),
        (OUT, query("SELECT * FROM users WHERE id = 1")),
        (IN, result_set(false, 3)),
        (OUT, pkt(0, b"\x16SELECT a FROM t WHERE b = ?")),
        (
            IN,
            cat(&[
                pkt(1, &prep_ok),
                coldef(2, "?"),
                eof(3, 2),
                coldef(4, "a"),
                eof(5, 2),
            ]),
        ),
        (OUT, query("SELECT * FROM nope")),
        (IN, err(1, 1146, "42S02", "missing")),
    ]
}

fn run(side: Side, segs: &[(Direction, Vec<u8>, u64)]) -> MysqlParser {
    let mut p = MysqlParser::new(side);
    let mut out = ParserOut::default();
    let mut stats = ParseStats::default();
    for (i, (direction, data, total)) in segs.iter().enumerate() {
        let seg = Segment {
            direction: *direction,
            data,
            total_len: *total,
            ts_ns: i as u64,
            tid: 1,
        };
        let _ = MysqlParser::detect(&seg);
        p.on_segment(&seg, &mut out, &mut stats);
        assert!(p.0.pending.len() <= MAX_PENDING);
        assert!(p.0.statements.len() <= MAX_STATEMENTS);
        assert!(p.0.statement_order.len() <= MAX_STATEMENTS);
    }
    p.on_idle(&mut out);
    p.on_close(99, &mut out, &mut stats);
    p
}

proptest! {
    #[test]
    fn random_bytes_never_panic(
        segs in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64), 0u64..3000),
            0..20,
        )
    ) {
        let segs: Vec<_> = segs
            .into_iter()
            .map(|(d, data, extra)| {
                let total = data.len() as u64 + extra;
                (if d { IN } else { OUT }, data, total)
            })
            .collect();
        run(Side::Client, &segs);
        run(Side::Server, &segs);
    }

    #[test]
    fn golden_splits_and_truncations_never_panic(
        cuts in proptest::collection::vec(1usize..40, 1..20),
        truncate in proptest::collection::vec(0usize..40, 9),
        flip in any::<u8>(),
        flip_at in any::<usize>(),
    ) {
        let mut segs = Vec::new();
        for (k, (dir, bytes)) in golden().into_iter().enumerate() {
            let mut bytes = bytes;
            if k == flip_at % 9 && !bytes.is_empty() {
                let i = flip_at % bytes.len();
                bytes[i] ^= flip;
            }
            let mut at = 0;
            let mut j = 0;
            while at < bytes.len() {
                let n = cuts[j % cuts.len()].min(bytes.len() - at);
                j += 1;
                let part = &bytes[at..at + n];
                let keep = n.saturating_sub(truncate[k]);
                let captured = if truncate[k] % 3 == 0 { part } else { &part[..keep] };
                segs.push((dir, captured.to_vec(), n as u64));
                at += n;
            }
        }
        for side in [Side::Client, Side::Server] {
            let segs: Vec<_> = segs
                .iter()
                .map(|(d, b, t)| {
                    let d = match (side, *d) {
                        (Side::Client, x) => x,
                        (Side::Server, Direction::Ingress) => OUT,
                        (Side::Server, Direction::Egress) => IN,
                    };
                    (d, b.clone(), *t)
                })
                .collect();
            run(side, &segs);
        }
    }
}
