//! OpenTelemetry profiles: an `ExportProfilesServiceRequest` (binary protobuf), the message an
//! OTLP collector takes at `/v1development/profiles`, written to `-o PATH.otlp` and posted by
//! `pyebpf daemon --otlp URL`.
//!
//! Pinned to opentelemetry-proto **v1.10.0** (`opentelemetry/proto/profiles/v1development/`,
//! Alpha): the messages below are declared by hand from that release's .proto files, with its
//! field numbers, and prost derives the encoding, as `pprof.rs` does. The tests decode the
//! output with the official Python bindings built from the same release (PyPI
//! `opentelemetry-proto` 1.45.2). A new proto release may renumber fields: bump both together.
//!
//! The same samples as the pprof output: each stack with every value. In v1.10.0 a profile has
//! one sample type, so the request holds one `Profile` per value (`samples/count`,
//! `cpu/nanoseconds`, `wall/nanoseconds`, then each off-CPU category), sharing one dictionary
//! (strings, functions, locations, stacks, attributes), and a profile holds only the stacks
//! whose value is not zero. Python frames are functions with file and first line, and the
//! location's line; native, kernel and wait frames are functions named by their text. Stacks
//! are leaf first. Sample attributes: `process.pid`, `process.executable.name`, `thread.id`,
//! `thread.name`, `pyebpf.category`, `pyebpf.syscall`, `pyebpf.target`, and the container's
//! `container.id`, `container.runtime.name`, `k8s.pod.uid`, `pyebpf.cgroup` (semantic
//! conventions' names where they exist). Every table starts with its zero value, as the
//! proto requires.
use std::{collections::HashMap, io::Write};

use prost::Message as _;

use super::pprof::{container_labels, period_ns, value_types, values};
use crate::model::{Frame, Profile, StackProfile};

/// The proto version the messages are declared from.
pub const PROTO_VERSION: &str = "v1.10.0";

/// opentelemetry-proto v1.10.0's messages (`collector/profiles/v1development/profiles_service.proto`,
/// `profiles/v1development/profiles.proto`, `common/v1/common.proto`, `resource/v1/resource.proto`).
/// Fields pyebpf never sets are left out.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportProfilesServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_profiles: Vec<ResourceProfiles>,
        #[prost(message, optional, tag = "2")]
        pub dictionary: Option<ProfilesDictionary>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportProfilesServiceResponse {
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<ExportProfilesPartialSuccess>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportProfilesPartialSuccess {
        #[prost(int64, tag = "1")]
        pub rejected_profiles: i64,
        #[prost(string, tag = "2")]
        pub error_message: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceProfiles {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_profiles: Vec<ScopeProfiles>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    /// `AnyValue`'s `oneof value`: only the string and int cases are used.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 3")]
        pub value: Option<any_value::Value>,
    }

    pub mod any_value {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(int64, tag = "3")]
            IntValue(i64),
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeProfiles {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub profiles: Vec<Profile>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, optional, tag = "1")]
        pub sample_type: Option<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        #[prost(uint64, tag = "4")]
        pub duration_nano: u64,
        #[prost(message, optional, tag = "5")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "6")]
        pub period: i64,
        #[prost(bytes = "vec", tag = "7")]
        pub profile_id: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int32, tag = "1")]
        pub type_strindex: i32,
        #[prost(int32, tag = "2")]
        pub unit_strindex: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(int32, tag = "1")]
        pub stack_index: i32,
        #[prost(int32, repeated, tag = "2")]
        pub attribute_indices: Vec<i32>,
        #[prost(int64, repeated, tag = "4")]
        pub values: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProfilesDictionary {
        #[prost(message, repeated, tag = "1")]
        pub mapping_table: Vec<Mapping>,
        #[prost(message, repeated, tag = "2")]
        pub location_table: Vec<Location>,
        #[prost(message, repeated, tag = "3")]
        pub function_table: Vec<Function>,
        #[prost(message, repeated, tag = "4")]
        pub link_table: Vec<Link>,
        #[prost(string, repeated, tag = "5")]
        pub string_table: Vec<String>,
        #[prost(message, repeated, tag = "6")]
        pub attribute_table: Vec<KeyValueAndUnit>,
        #[prost(message, repeated, tag = "7")]
        pub stack_table: Vec<Stack>,
    }

    /// Only the zero mapping is written: frames are already symbolized.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Link {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(int32, tag = "1")]
        pub mapping_index: i32,
        #[prost(uint64, tag = "2")]
        pub address: u64,
        #[prost(message, repeated, tag = "3")]
        pub lines: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(int32, tag = "1")]
        pub function_index: i32,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(int32, tag = "1")]
        pub name_strindex: i32,
        #[prost(int32, tag = "2")]
        pub system_name_strindex: i32,
        #[prost(int32, tag = "3")]
        pub filename_strindex: i32,
        #[prost(int64, tag = "4")]
        pub start_line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValueAndUnit {
        #[prost(int32, tag = "1")]
        pub key_strindex: i32,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
        #[prost(int32, tag = "3")]
        pub unit_strindex: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Stack {
        #[prost(int32, repeated, tag = "1")]
        pub location_indices: Vec<i32>,
    }
}

/// An attribute's value, as the dictionary keys them.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Value {
    Str(String),
    Int(i64),
}

/// Interns the dictionary's tables, each starting with its zero value.
struct Dictionary {
    out: proto::ProfilesDictionary,
    strings: HashMap<String, i32>,
    functions: HashMap<(i32, i32, i64), i32>,
    locations: HashMap<(i32, i64), i32>,
    stacks: HashMap<Vec<i32>, i32>,
    attributes: HashMap<(i32, Value), i32>,
}

impl Dictionary {
    fn new() -> Self {
        let mut d = Self {
            out: proto::ProfilesDictionary {
                mapping_table: vec![proto::Mapping {}],
                location_table: vec![proto::Location::default()],
                function_table: vec![proto::Function::default()],
                link_table: vec![proto::Link {}],
                string_table: Vec::new(),
                attribute_table: vec![proto::KeyValueAndUnit::default()],
                stack_table: vec![proto::Stack::default()],
            },
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            stacks: HashMap::new(),
            attributes: HashMap::new(),
        };
        d.string("");
        d
    }

    fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.out.string_table.len() as i32;
        self.out.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn location(&mut self, name: &str, file: &str, start_line: i64, line: i64) -> i32 {
        let key = (self.string(name), self.string(file), start_line);
        let next = self.out.function_table.len() as i32;
        let function_index = *self.functions.entry(key).or_insert(next);
        if function_index == next {
            self.out.function_table.push(proto::Function {
                name_strindex: key.0,
                system_name_strindex: 0,
                filename_strindex: key.1,
                start_line,
            });
        }
        let next = self.out.location_table.len() as i32;
        let location_index = *self.locations.entry((function_index, line)).or_insert(next);
        if location_index == next {
            self.out.location_table.push(proto::Location {
                mapping_index: 0,
                address: 0,
                lines: vec![proto::Line { function_index, line }],
            });
        }
        location_index
    }

    /// The stack's index, leaf first: the wait frame of an off-CPU stack, then its frames.
    fn stack(&mut self, s: &StackProfile) -> i32 {
        let frames: Vec<_> = s.frames_with_wait().collect();
        let locations: Vec<i32> = frames
            .iter()
            .rev()
            .map(|f| match &**f {
                Frame::Python(p) => {
                    self.location(&p.function, &p.file, p.first_line.into(), p.line.unwrap_or(0).into())
                }
                other => self.location(&other.to_string(), "", 0, 0),
            })
            .collect();
        let next = self.out.stack_table.len() as i32;
        let index = *self.stacks.entry(locations.clone()).or_insert(next);
        if index == next {
            self.out.stack_table.push(proto::Stack { location_indices: locations });
        }
        index
    }

    fn attribute(&mut self, key: &str, value: Value) -> i32 {
        let key_strindex = self.string(key);
        let next = self.out.attribute_table.len() as i32;
        let index = *self.attributes.entry((key_strindex, value.clone())).or_insert(next);
        if index == next {
            let value = match value {
                Value::Str(s) => proto::any_value::Value::StringValue(s),
                Value::Int(i) => proto::any_value::Value::IntValue(i),
            };
            self.out.attribute_table.push(proto::KeyValueAndUnit {
                key_strindex,
                value: Some(proto::AnyValue { value: Some(value) }),
                unit_strindex: 0,
            });
        }
        index
    }
}

/// pprof's container label names → OpenTelemetry's.
fn container_attribute(pprof_label: &str) -> &str {
    match pprof_label {
        "container_id" => "container.id",
        "container_runtime" => "container.runtime.name",
        "pod_uid" => "k8s.pod.uid",
        "cgroup" => "pyebpf.cgroup",
        other => other,
    }
}

fn str_value(key: &str, value: String) -> proto::KeyValue {
    proto::KeyValue {
        key: key.to_string(),
        value: Some(proto::AnyValue { value: Some(proto::any_value::Value::StringValue(value)) }),
    }
}

/// The request for a finished profile; `host` names the machine in the resource.
pub fn build(profile: &Profile, host: &str) -> proto::ExportProfilesServiceRequest {
    let mut d = Dictionary::new();
    let types = value_types();
    let period_ns = period_ns(profile);
    let mut samples: Vec<Vec<proto::Sample>> = vec![Vec::new(); types.len()];
    for p in &profile.processes {
        for s in &p.stacks {
            let values = values(s, period_ns);
            if values.iter().all(|&v| v == 0) {
                continue;
            }
            let stack_index = d.stack(s);
            let mut attribute_indices = vec![
                d.attribute("process.pid", Value::Int(p.pid.into())),
                d.attribute("process.executable.name", Value::Str(p.comm.clone())),
                d.attribute("thread.id", Value::Int(s.tid.into())),
                d.attribute("thread.name", Value::Str(s.thread.clone())),
                d.attribute("pyebpf.category", Value::Str(s.category.name().to_string())),
            ];
            if let Some(syscall) = &s.syscall {
                attribute_indices.push(d.attribute("pyebpf.syscall", Value::Str(syscall.clone())));
            }
            if let Some(target) = &s.target {
                attribute_indices.push(d.attribute("pyebpf.target", Value::Str(target.clone())));
            }
            if let Some(c) = &p.container {
                for (key, value) in container_labels(c) {
                    attribute_indices.push(d.attribute(container_attribute(key), Value::Str(value.to_string())));
                }
            }
            for (i, &value) in values.iter().enumerate() {
                if value != 0 {
                    samples[i].push(proto::Sample {
                        stack_index,
                        attribute_indices: attribute_indices.clone(),
                        values: vec![value],
                    });
                }
            }
        }
    }
    let time_unix_nano = (profile.start_time_unix * 1e9) as u64;
    let period_type = proto::ValueType { type_strindex: d.string("cpu"), unit_strindex: d.string("nanoseconds") };
    let profiles = types
        .iter()
        .zip(samples)
        .enumerate()
        .map(|(i, ((kind, unit), samples))| proto::Profile {
            sample_type: Some(proto::ValueType { type_strindex: d.string(kind), unit_strindex: d.string(unit) }),
            samples,
            time_unix_nano,
            duration_nano: profile.duration_ns,
            period_type: Some(period_type.clone()),
            period: period_ns as i64,
            profile_id: profile_id(time_unix_nano, i as u64),
        })
        .collect();
    proto::ExportProfilesServiceRequest {
        resource_profiles: vec![proto::ResourceProfiles {
            resource: Some(proto::Resource {
                attributes: vec![str_value("host.name", host.to_string()), str_value("service.name", "pyebpf".into())],
            }),
            scope_profiles: vec![proto::ScopeProfiles {
                scope: Some(proto::InstrumentationScope {
                    name: "pyebpf".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                profiles,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
        dictionary: Some(d.out),
    }
}

/// A 16-byte id, unique per (start time, value type) and not all zero (the proto's "unset").
fn profile_id(time_unix_nano: u64, index: u64) -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    id.extend_from_slice(&time_unix_nano.max(1).to_be_bytes());
    id.extend_from_slice(&(index + 1).to_be_bytes());
    id
}

/// This machine's name for the resource's `host.name`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

pub fn write(profile: &Profile, w: &mut dyn Write) -> anyhow::Result<()> {
    w.write_all(&build(profile, &host_name()).encode_to_vec())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mode, profile::tests::sample_profile};

    fn decoded() -> proto::ExportProfilesServiceRequest {
        let mut out = Vec::new();
        write(&sample_profile(Mode::Wall), &mut out).unwrap();
        proto::ExportProfilesServiceRequest::decode(out.as_slice()).unwrap()
    }

    #[test]
    fn one_profile_per_value_sharing_a_dictionary_with_zero_values_first() {
        let req = decoded();
        let d = req.dictionary.as_ref().unwrap();
        assert_eq!(d.string_table[0], "");
        assert_eq!(d.stack_table[0], proto::Stack::default());
        assert_eq!(d.function_table[0], proto::Function::default());
        let profiles = &req.resource_profiles[0].scope_profiles[0].profiles;
        let types: Vec<String> = profiles
            .iter()
            .map(|p| {
                let t = p.sample_type.as_ref().unwrap();
                format!("{}/{}", d.string_table[t.type_strindex as usize], d.string_table[t.unit_strindex as usize])
            })
            .collect();
        let expected: Vec<String> = value_types().iter().map(|(k, u)| format!("{k}/{u}")).collect();
        assert_eq!(types, expected);
        // Same totals as the pprof values: wall is the sum of every stack's weight.
        let profile = sample_profile(Mode::Wall);
        let wall: i64 = profiles[2].samples.iter().map(|s| s.values[0]).sum();
        let expected_wall: u64 = profile.processes.iter().flat_map(|p| &p.stacks).map(|s| s.weight_ns).sum();
        assert_eq!(wall as u64, expected_wall);
        for p in profiles {
            assert!(p.samples.iter().all(|s| s.values.len() == 1 && s.values[0] != 0 && s.stack_index > 0));
            assert_eq!(p.profile_id.len(), 16);
        }
    }

    #[test]
    fn samples_carry_process_thread_and_category_attributes() {
        let req = decoded();
        let d = req.dictionary.as_ref().unwrap();
        let cpu = &req.resource_profiles[0].scope_profiles[0].profiles[1];
        let attrs: Vec<String> = cpu.samples[0]
            .attribute_indices
            .iter()
            .map(|&i| {
                let a = &d.attribute_table[i as usize];
                let v = match a.value.as_ref().unwrap().value.as_ref().unwrap() {
                    proto::any_value::Value::StringValue(s) => s.clone(),
                    proto::any_value::Value::IntValue(i) => i.to_string(),
                };
                format!("{}={v}", d.string_table[a.key_strindex as usize])
            })
            .collect();
        assert!(attrs.contains(&"process.pid=10".to_string()), "{attrs:?}");
        assert!(attrs.contains(&"pyebpf.category=cpu".to_string()), "{attrs:?}");
        assert!(attrs.iter().any(|a| a.starts_with("thread.id=")), "{attrs:?}");
    }
}
