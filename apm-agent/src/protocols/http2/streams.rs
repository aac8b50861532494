//! The open streams of one HTTP/2 connection: one request/response exchange each, keyed by
//! the client-initiated stream id. The ids come from the peers, so the table has a budget
//! (a client may open any number of streams, up to what the server allows, and a hostile
//! one ignores even that); streams past it are not followed and counted.
use std::collections::HashMap;

use super::headers::Fields;
use crate::request::GrpcCode;

/// Streams followed at once per connection. Servers commonly allow 100 or 128 concurrent
/// streams (SETTINGS_MAX_CONCURRENT_STREAMS); twice that leaves room for streams whose end
/// was not seen yet.
pub const MAX_STREAMS: usize = 256;

/// One exchange in flight.
#[derive(Debug)]
pub struct Stream {
    pub seq: u64,
    /// When the segment with the first byte of the request's HEADERS returned, and its
    /// thread.
    pub start_ns: u64,
    pub tid: u32,
    /// The request's headers; None when its header block could not be read (counted).
    pub request: Option<Fields>,
    /// The final (non-1xx) response status, once its headers were read.
    pub status: Option<u16>,
    /// `grpc-status` of the response's headers or trailers.
    pub grpc_status: Option<GrpcCode>,
    /// A header block of the response (its head or its trailers) could not be read
    /// (counted).
    pub response_lost: bool,
}

/// The streams of one connection.
#[derive(Debug, Default)]
pub struct Streams {
    open: HashMap<u32, Stream>,
    /// Highest client stream id seen: a frame on a lower id the table does not hold belongs
    /// to a stream already ended, reset, refused by the budget or dropped after a gap.
    highest: u32,
}

/// The table was full.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Streams {
    pub fn get(&self, id: u32) -> Option<&Stream> {
        self.open.get(&id)
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.open.get_mut(&id)
    }

    pub fn remove(&mut self, id: u32) -> Option<Stream> {
        self.open.remove(&id)
    }

    /// Has a stream with this id been opened (it may be over)?
    pub fn seen(&self, id: u32) -> bool {
        id <= self.highest
    }

    /// Records that the client opened `id`; the stream is followed when the budget allows.
    pub fn open(&mut self, id: u32, stream: Stream) -> Result<(), Full> {
        self.highest = self.highest.max(id);
        if self.open.len() >= MAX_STREAMS {
            return Err(Full);
        }
        self.open.insert(id, stream);
        Ok(())
    }

    /// Drops the streams above `last` (GOAWAY: the server never processed them); returns
    /// how many.
    pub fn drop_above(&mut self, last: u32) -> usize {
        let before = self.open.len();
        self.open.retain(|&id, _| id <= last);
        before - self.open.len()
    }

    /// Drops every stream; returns how many.
    pub fn clear(&mut self) -> usize {
        let n = self.open.len();
        self.open.clear();
        n
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.len()
    }
}
