//! The one place where ring-buffer bytes become typed events.
//!
//! Records are checked for length before anything is read, read unaligned, and every
//! enumerated field is converted with `TryFrom`. A bad record is an error the caller counts,
//! never a panic.
use apm_common::{ConnEvent, DataEventHeader, ProcEvent, TupleEvent, direction, kind, role};

pub use super::records::Direction;

/// A decoded kernel record, borrowing the payload from the ring buffer.
#[derive(Debug)]
pub enum Event<'a> {
    Data(DataEvent<'a>),
    ConnOpen(ConnEvent),
    ConnClose(ConnEvent),
    ProcExec(ProcEvent),
    ProcExit(ProcEvent),
    ConnTuple(TupleEvent),
    /// A process mapped a file executable (loaded a library).
    ProcExecMap(ProcEvent),
}

/// Bytes that moved through a tracked socket.
#[derive(Debug)]
pub struct DataEvent<'a> {
    pub header: DataEventHeader,
    pub direction: Direction,
    pub payload: &'a [u8],
}

impl TryFrom<u32> for Direction {
    type Error = DecodeError;
    fn try_from(v: u32) -> Result<Self, DecodeError> {
        match v {
            direction::INGRESS => Ok(Self::Ingress),
            direction::EGRESS => Ok(Self::Egress),
            other => Err(DecodeError::BadField {
                field: "direction",
                value: other,
            }),
        }
    }
}

/// How the kernel came to track a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRole {
    Unknown,
    Accepted,
    Connected,
}

impl TryFrom<u32> for SocketRole {
    type Error = DecodeError;
    fn try_from(v: u32) -> Result<Self, DecodeError> {
        match v {
            role::UNKNOWN => Ok(Self::Unknown),
            role::SERVER => Ok(Self::Accepted),
            role::CLIENT => Ok(Self::Connected),
            other => Err(DecodeError::BadField {
                field: "role",
                value: other,
            }),
        }
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("record of kind {kind} has {len} bytes, needs {need}")]
    Truncated { kind: u32, len: usize, need: usize },
    #[error("data record announces {announced} payload bytes but carries {carried}")]
    PayloadMismatch { announced: u32, carried: usize },
    #[error("field {field} has invalid value {value}")]
    BadField { field: &'static str, value: u32 },
}

/// Marker for the `#[repr(C)]` integer-only records that may be read from arbitrary bytes.
trait Plain: Copy {}
impl Plain for DataEventHeader {}
impl Plain for ConnEvent {}
impl Plain for ProcEvent {}
impl Plain for TupleEvent {}

fn read<T: Plain>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Truncated {
            kind,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: the length was checked above, the read is unaligned, and `T` is a #[repr(C)]
    // struct of integers and byte arrays, for which every bit pattern is valid.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, DecodeError> {
    let Some(kind_bytes) = bytes.get(..4) else {
        return Err(DecodeError::Empty);
    };
    let mut raw = [0u8; 4];
    raw.copy_from_slice(kind_bytes);
    let kind = u32::from_ne_bytes(raw);
    match kind {
        kind::DATA => {
            let header: DataEventHeader = read(bytes, kind)?;
            let payload = &bytes[size_of::<DataEventHeader>()..];
            if payload.len() != header.captured_len as usize {
                return Err(DecodeError::PayloadMismatch {
                    announced: header.captured_len,
                    carried: payload.len(),
                });
            }
            let direction = Direction::try_from(header.direction)?;
            Ok(Event::Data(DataEvent {
                header,
                direction,
                payload,
            }))
        }
        kind::CONN_OPEN => {
            let ev: ConnEvent = read(bytes, kind)?;
            SocketRole::try_from(ev.role)?;
            Ok(Event::ConnOpen(ev))
        }
        kind::CONN_CLOSE => Ok(Event::ConnClose(read(bytes, kind)?)),
        kind::PROC_EXEC => Ok(Event::ProcExec(read(bytes, kind)?)),
        kind::PROC_EXIT => Ok(Event::ProcExit(read(bytes, kind)?)),
        kind::CONN_TUPLE => Ok(Event::ConnTuple(read(bytes, kind)?)),
        kind::PROC_EXEC_MAP => Ok(Event::ProcExecMap(read(bytes, kind)?)),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Names of the event kinds, for the agent's own metrics, in the order of [`kind_index`].
pub const KIND_NAMES: [&str; 7] = [
    "data",
    "conn_open",
    "conn_close",
    "proc_exec",
    "proc_exit",
    "conn_tuple",
    "proc_exec_map",
];

/// Index of an event's kind in [`KIND_NAMES`].
pub fn kind_index(event: &Event<'_>) -> usize {
    match event {
        Event::Data(_) => 0,
        Event::ConnOpen(_) => 1,
        Event::ConnClose(_) => 2,
        Event::ProcExec(_) => 3,
        Event::ProcExit(_) => 4,
        Event::ConnTuple(_) => 5,
        Event::ProcExecMap(_) => 6,
    }
}

/// A NUL-padded `comm` as text.
pub fn comm_str(comm: &[u8; 16]) -> &str {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    std::str::from_utf8(&comm[..end]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T: Plain>(v: &T) -> Vec<u8> {
        // SAFETY: test helper over plain #[repr(C)] integer structs.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn data_event_round_trips() {
        let header = DataEventHeader {
            kind: kind::DATA,
            direction: direction::EGRESS,
            tgid: 7,
            tid: 8,
            fd: 3,
            captured_len: 5,
            total_len: 500,
            ..Default::default()
        };
        let mut bytes = as_bytes(&header);
        bytes.extend_from_slice(b"hello");
        match decode(&bytes) {
            Ok(Event::Data(d)) => {
                assert_eq!(d.payload, b"hello");
                assert_eq!(d.direction, Direction::Egress);
                assert_eq!(d.header.total_len, 500);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Empty);
        assert_eq!(decode(&[1, 0]).unwrap_err(), DecodeError::Empty);
        assert_eq!(
            decode(&99u32.to_ne_bytes()).unwrap_err(),
            DecodeError::UnknownKind(99)
        );
        assert!(matches!(
            decode(&kind::DATA.to_ne_bytes()),
            Err(DecodeError::Truncated { .. })
        ));
        let header = DataEventHeader {
            kind: kind::DATA,
            captured_len: 10,
            ..Default::default()
        };
        let mut bytes = as_bytes(&header);
        bytes.extend_from_slice(b"short");
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::PayloadMismatch { .. })
        ));
        let header = DataEventHeader {
            kind: kind::DATA,
            direction: 7,
            ..Default::default()
        };
        assert!(matches!(
            decode(&as_bytes(&header)),
            Err(DecodeError::BadField { .. })
        ));
        let conn = ConnEvent {
            kind: kind::CONN_OPEN,
            role: 9,
            ..Default::default()
        };
        assert!(matches!(
            decode(&as_bytes(&conn)),
            Err(DecodeError::BadField { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_u32;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    (state & 0xff) as u8
                })
                .collect();
            let _ = decode(&bytes);
            for k in 1..=7u32 {
                let mut b = bytes.clone();
                if b.len() >= 4 {
                    b[..4].copy_from_slice(&k.to_ne_bytes());
                }
                let _ = decode(&b);
            }
        }
    }

    #[test]
    fn comm_is_trimmed() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        assert_eq!(comm_str(&comm), "curl");
        assert_eq!(comm_str(&[b'x'; 16]), "xxxxxxxxxxxxxxxx");
    }
}
