//! The pprof protobuf format (`profile.proto` of github.com/google/pprof), gzip-compressed:
//! what `go tool pprof` and most profiling backends read. The service becomes a `service`
//! label of each sample; mappings carry file names and build ids so that unresolved frames
//! (stripped binaries) can be symbolized later by whoever holds the unstripped files.
use std::{collections::HashMap, io::Write, sync::Arc};

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::model::{Frame, FrameKind, Profile};

#[derive(Clone, PartialEq, Message)]
struct PbProfile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    period: i64,
}

#[derive(Clone, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
struct Label {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(int64, tag = "2")]
    str: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Mapping {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    memory_start: u64,
    #[prost(uint64, tag = "3")]
    memory_limit: u64,
    #[prost(uint64, tag = "4")]
    file_offset: u64,
    #[prost(int64, tag = "5")]
    filename: i64,
    #[prost(int64, tag = "6")]
    build_id: i64,
    #[prost(bool, tag = "7")]
    has_functions: bool,
}

#[derive(Clone, PartialEq, Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    mapping_id: u64,
    #[prost(uint64, tag = "3")]
    address: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
}

#[derive(Clone, PartialEq, Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
}

/// A mapping's identity: (file, build id).
type MappingKey = (Option<Arc<str>>, Option<Arc<str>>);

/// Builds the tables of a pprof profile.
#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<MappingKey, u64>,
    functions: Vec<Function>,
    function_ids: HashMap<(Arc<str>, Option<Arc<str>>), u64>,
    locations: Vec<Location>,
    location_ids: HashMap<Frame, u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    fn mapping(&mut self, frame: &Frame) -> u64 {
        let key = (frame.module.clone(), frame.build_id.clone());
        if let Some(&id) = self.mapping_ids.get(&key) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = match (&frame.module, frame.kind) {
            (Some(m), _) => self.string(m),
            (None, FrameKind::Kernel) => self.string("[kernel.kallsyms]"),
            (None, _) => 0,
        };
        let build_id = frame.build_id.as_deref().map_or(0, |b| self.string(b));
        // Addresses are file offsets (the mapping starts at file offset 0 of its file).
        self.mappings.push(Mapping {
            id,
            memory_start: 0,
            memory_limit: u64::MAX,
            file_offset: 0,
            filename,
            build_id,
            has_functions: frame.kind != FrameKind::Unresolved,
        });
        self.mapping_ids.insert(key, id);
        id
    }

    fn location(&mut self, frame: &Frame) -> u64 {
        if let Some(&id) = self.location_ids.get(frame) {
            return id;
        }
        let mapping_id = self.mapping(frame);
        let line = if frame.kind == FrameKind::Unresolved {
            // No function: a backend symbolizes (build id, address) itself.
            Vec::new()
        } else {
            let key = (frame.name.clone(), frame.module.clone());
            let function_id = match self.function_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let id = self.functions.len() as u64 + 1;
                    let name = self.string(&frame.display());
                    let filename = frame.module.as_deref().map_or(0, |m| self.string(m));
                    self.functions.push(Function {
                        id,
                        name,
                        system_name: name,
                        filename,
                    });
                    self.function_ids.insert(key, id);
                    id
                }
            };
            vec![Line { function_id }]
        };
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            mapping_id,
            address: frame.offset,
            line,
        });
        self.location_ids.insert(frame.clone(), id);
        id
    }
}

/// Encodes `profile` (uncompressed protobuf).
pub fn encode(profile: &Profile) -> Vec<u8> {
    let mut b = Builder::default();
    b.string("");
    let samples_type = ValueType {
        r#type: b.string("samples"),
        unit: b.string("count"),
    };
    let cpu_type = ValueType {
        r#type: b.string("cpu"),
        unit: b.string("nanoseconds"),
    };
    let service_key = b.string("service");
    let period = profile.period_ns() as i64;
    let mut samples = Vec::new();
    for (stack, count) in profile.sorted() {
        let mut label = Vec::new();
        let mut location_id = Vec::with_capacity(stack.len());
        // pprof lists the innermost frame first; the root (service) becomes a label.
        for frame in stack.iter().rev() {
            if frame.kind == FrameKind::Root {
                label.push(Label {
                    key: service_key,
                    str: b.string(&frame.name),
                });
            } else {
                location_id.push(b.location(frame));
            }
        }
        samples.push(Sample {
            location_id,
            value: vec![count as i64, count as i64 * period],
            label,
        });
    }
    PbProfile {
        sample_type: vec![samples_type, cpu_type.clone()],
        sample: samples,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        time_nanos: profile.start_unix_ns as i64,
        duration_nanos: profile.duration_ns as i64,
        period_type: Some(cpu_type),
        period,
    }
    .encode_to_vec()
}

/// Writes `profile` as gzip-compressed pprof.
pub fn write(profile: &Profile, out: &mut impl Write) -> std::io::Result<()> {
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&encode(profile))?;
    gz.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_shared_and_leaf_first() {
        let mut p = Profile::new(100, 1);
        let root = Arc::new(Frame::root("svc"));
        let main = Arc::new(Frame {
            kind: FrameKind::User,
            name: "main".into(),
            module: Some("/bin/app".into()),
            build_id: Some("abcd".into()),
            offset: 0x100,
        });
        let unknown = Arc::new(Frame {
            kind: FrameKind::Unresolved,
            name: "[unknown] app+0x1234".into(),
            module: Some("/bin/app".into()),
            build_id: Some("abcd".into()),
            offset: 0x1234,
        });
        p.add(vec![root.clone(), main.clone()].into(), 2);
        p.add(vec![root, main, unknown].into(), 5);
        let pb = PbProfile::decode(encode(&p).as_slice()).unwrap();
        assert_eq!(pb.sample.len(), 2);
        assert_eq!(pb.mapping.len(), 1, "one file, one mapping");
        assert_eq!(pb.location.len(), 2);
        assert_eq!(pb.function.len(), 1, "the unresolved frame has no function");
        let deep = pb.sample.iter().find(|s| s.location_id.len() == 2).unwrap();
        assert_eq!(deep.value, vec![5, 5 * 10_000_000]);
        let leaf = &pb.location[(deep.location_id[0] - 1) as usize];
        assert_eq!(leaf.address, 0x1234);
        assert!(leaf.line.is_empty());
        let m = &pb.mapping[0];
        assert_eq!(pb.string_table[m.build_id as usize], "abcd");
        assert_eq!(pb.string_table[deep.label[0].str as usize], "svc");
        assert_eq!(pb.period, 10_000_000);
    }
}
