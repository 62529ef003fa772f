//! The kernel BTF reader (struct member offsets from /sys/kernel/btf/vmlinux): raw bytes, or a
//! well-formed BTF blob built from fuzzer-chosen type records (so that struct lookups, nested
//! anonymous members and member offsets are reached), then the lookups pyebpf makes.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use profiler::bpf::kernel_btf::KernelBtf;

/// Names the lookups ask for, and others.
const NAMES: [&str; 7] = ["", "task_struct", "thread", "fsbase", "pid", "tgid", "x"];

#[derive(Arbitrary, Debug)]
struct Member {
    name: u8,
    type_id: u32,
    offset: u32,
}

#[derive(Arbitrary, Debug)]
struct Type {
    name: u8,
    kind: u8,
    kind_flag: bool,
    /// vlen as written in the record (may disagree with `members`).
    vlen: Option<u16>,
    members: Vec<Member>,
    /// Extra 32-bit words after the record.
    extra: Vec<u32>,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Built { types: Vec<Type>, header_tweak: Option<(u8, u32)> },
}

fn build(types: &[Type], header_tweak: Option<(u8, u32)>) -> Vec<u8> {
    let mut strings = vec![0u8];
    let mut name_off = Vec::new();
    for name in NAMES {
        name_off.push(strings.len() as u32);
        strings.extend_from_slice(name.as_bytes());
        strings.push(0);
    }
    let name = |i: u8| name_off[i as usize % NAMES.len()];
    let mut body = Vec::new();
    for t in types {
        let vlen = t.vlen.unwrap_or(t.members.len() as u16) as u32;
        let info = (t.kind_flag as u32) << 31 | (t.kind as u32 & 0x1f) << 24 | vlen;
        body.extend(name(t.name).to_le_bytes());
        body.extend(info.to_le_bytes());
        body.extend(0u32.to_le_bytes());
        for m in &t.members {
            body.extend(name(m.name).to_le_bytes());
            body.extend(m.type_id.to_le_bytes());
            body.extend(m.offset.to_le_bytes());
        }
        for w in &t.extra {
            body.extend(w.to_le_bytes());
        }
    }
    let mut header = [0u32; 6];
    header[1] = 24; // hdr_len (with magic/version/flags in word 0)
    header[2] = 0; // type_off
    header[3] = body.len() as u32;
    header[4] = body.len() as u32; // str_off
    header[5] = strings.len() as u32;
    if let Some((word, value)) = header_tweak {
        header[1 + word as usize % 5] = value;
    }
    let mut out = Vec::new();
    out.extend(0xeb9fu16.to_le_bytes());
    out.push(1);
    out.push(0);
    for w in &header[1..] {
        out.extend(w.to_le_bytes());
    }
    out.extend(body);
    out.extend(strings);
    out
}

fuzz_target!(|input: Input| {
    let data = match input {
        Input::Raw(data) => data,
        Input::Built { types, header_tweak } => build(&types, header_tweak),
    };
    if let Some(btf) = KernelBtf::parse(&data) {
        let _ = btf.offset_of("task_struct", &["thread", "fsbase"]);
        let _ = btf.offset_of("task_struct", &["pid"]);
        let _ = btf.offset_of("task_struct", &["tgid"]);
    }
});
