//! What every parser shares about a connection's two directions: which half of the exchange
//! a direction carries, the pair of readers, and the streak of parse errors after which a
//! connection is given up.
use super::Direction;
use crate::request::Side;

/// Consecutive parse errors after which a connection is given up.
pub const MAX_ERRORS_IN_A_ROW: u32 = 3;

/// Which half of the exchanges a direction carries: the requests (commands, queries, the
/// frontend's messages) or the responses (replies, results, the backend's messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Requests,
    Responses,
}

impl Half {
    /// A server reads requests and writes responses; a client writes requests and reads
    /// responses.
    pub fn of(side: Side, direction: Direction) -> Self {
        match (side, direction) {
            (Side::Server, Direction::Ingress) | (Side::Client, Direction::Egress) => {
                Self::Requests
            }
            _ => Self::Responses,
        }
    }
}

/// The readers of a connection's two directions.
#[derive(Debug)]
pub struct Duplex<R> {
    pub requests: R,
    pub responses: R,
}

impl<R> Duplex<R> {
    pub fn get_mut(&mut self, half: Half) -> &mut R {
        match half {
            Half::Requests => &mut self.requests,
            Half::Responses => &mut self.responses,
        }
    }

    /// Both readers, requests first.
    pub fn both_mut(&mut self) -> [&mut R; 2] {
        [&mut self.requests, &mut self.responses]
    }
}

/// Walks one segment through the reader of `half`: the reader is taken out of the parser
/// (`placeholder` stands in) so that it and the rest of the parser borrow separately while
/// `feed` runs, then put back.
pub fn walk<P, R>(
    parser: &mut P,
    readers: fn(&mut P) -> &mut Duplex<R>,
    half: Half,
    placeholder: R,
    feed: impl FnOnce(&mut P, &mut R),
) {
    let mut reader = std::mem::replace(readers(parser).get_mut(half), placeholder);
    feed(parser, &mut reader);
    *readers(parser).get_mut(half) = reader;
}

/// Consecutive parse errors of a connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ErrorStreak(u32);

impl ErrorStreak {
    /// One more error in a row.
    pub fn hit(&mut self) {
        self.0 = self.0.saturating_add(1);
    }

    /// A message parsed: the streak is over.
    pub fn clear(&mut self) {
        self.0 = 0;
    }

    /// Long enough to give the connection up.
    pub fn too_long(&self) -> bool {
        self.0 >= MAX_ERRORS_IN_A_ROW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_follow_the_side() {
        use Direction::{Egress, Ingress};
        assert_eq!(Half::of(Side::Server, Ingress), Half::Requests);
        assert_eq!(Half::of(Side::Server, Egress), Half::Responses);
        assert_eq!(Half::of(Side::Client, Egress), Half::Requests);
        assert_eq!(Half::of(Side::Client, Ingress), Half::Responses);
    }

    #[test]
    fn a_walk_puts_the_reader_back_and_a_streak_ends() {
        struct P {
            readers: Duplex<Vec<u8>>,
            seen: usize,
        }
        let mut p = P {
            readers: Duplex {
                requests: vec![1],
                responses: vec![2, 3],
            },
            seen: 0,
        };
        walk(
            &mut p,
            |p| &mut p.readers,
            Half::Responses,
            Vec::new(),
            |p, r| {
                p.seen = r.len();
                r.push(4);
            },
        );
        assert_eq!(p.seen, 2);
        assert_eq!(p.readers.responses, [2, 3, 4]);
        assert_eq!(p.readers.requests, [1]);
        let mut streak = ErrorStreak::default();
        for _ in 0..MAX_ERRORS_IN_A_ROW - 1 {
            streak.hit();
        }
        assert!(!streak.too_long());
        streak.hit();
        assert!(streak.too_long());
        streak.clear();
        assert!(!streak.too_long());
    }
}
