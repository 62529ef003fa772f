//! Struct member offsets from the kernel's own BTF (/sys/kernel/btf/vmlinux).
//!
//! aya has no CO-RE for Rust programs, so kernel struct offsets the BPF side needs (a task's pid,
//! tgid and state, and its fs base, which is the thread's `pthread_t` on x86-64) are computed
//! here and passed in as load-time globals. This reads just enough of the BTF format: type
//! records to find a struct and walk its members, seeing through the typedef and qualifier
//! records (`const struct path f_path` on 6.13+) that stand between a member and its struct.
use std::collections::HashMap;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
/// Typedefs and qualifiers followed in a row at most (a corrupt file may loop them).
const MAX_ALIAS_CHAIN: usize = 16;

struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

/// Structs and unions by type id, with their members.
pub struct KernelBtf {
    structs: HashMap<u32, (String, Vec<Member>)>,
    /// typedef, volatile, const, restrict and type_tag records: id → the type they name.
    aliases: HashMap<u32, u32>,
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?))
}

impl KernelBtf {
    /// The running kernel's BTF, or the file `$PYEBPF_KERNEL_BTF` names (the tests use it to
    /// stand for kernels that lack a type or a member: a missing file is a kernel without BTF).
    pub fn load() -> Option<Self> {
        let path = std::env::var_os("PYEBPF_KERNEL_BTF").unwrap_or_else(|| "/sys/kernel/btf/vmlinux".into());
        Self::parse(&std::fs::read(path).ok()?)
    }

    pub fn parse(data: &[u8]) -> Option<Self> {
        if u16::from_le_bytes(data.get(0..2)?.try_into().ok()?) != BTF_MAGIC {
            return None;
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = hdr_len + u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = hdr_len + u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let strings = data.get(str_off..str_off + str_len)?;
        let name = |off: u32| -> String {
            let s = strings.get(off as usize..).unwrap_or_default();
            let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        let types = data.get(type_off..type_off + type_len)?;
        let mut structs = HashMap::new();
        let mut aliases = HashMap::new();
        let mut pos = 0usize;
        let mut id = 1u32;
        while pos + 12 <= types.len() {
            let name_off = u32_at(types, pos)?;
            let info = u32_at(types, pos + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            pos += 12;
            if matches!(kind, KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) {
                // `size_or_type`, the word before the record's end, is the named type.
                aliases.insert(id, u32_at(types, pos - 4)?);
            }
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for m in 0..vlen {
                    let at = pos + 12 * m;
                    let offset = u32_at(types, at + 8)?;
                    members.push(Member {
                        name: name(u32_at(types, at)?),
                        type_id: u32_at(types, at + 4)?,
                        // With kind_flag, the top 8 bits hold a bitfield size.
                        bit_offset: if kind_flag { offset & 0x00ff_ffff } else { offset },
                    });
                }
                structs.insert(id, (name(name_off), members));
            }
            pos += extra;
            id += 1;
        }
        Some(Self { structs, aliases })
    }

    /// Byte offset of `path` (e.g. `["thread", "fsbase"]`) inside struct `name`, following
    /// nested struct members (anonymous unions and structs are searched through).
    pub fn offset_of(&self, name: &str, path: &[&str]) -> Option<u32> {
        let (&id, _) = self.structs.iter().find(|(_, (n, _))| n == name)?;
        let mut bits = 0u32;
        let mut current = id;
        for field in path {
            // Members looked at per field, at most: anonymous members nest, and in a corrupt
            // file each could be the struct itself (an exponential search otherwise).
            let mut budget = 100_000u32;
            let (member_bits, member_type) = self.find_member(current, field, 0, &mut budget)?;
            bits = bits.checked_add(member_bits)?;
            current = member_type;
        }
        bits.is_multiple_of(8).then_some(bits / 8)
    }

    /// Offset of the first of `paths` that struct `name` has (members renamed across kernels).
    pub fn offset_of_any(&self, name: &str, paths: &[&[&str]]) -> Option<(u32, usize)> {
        paths.iter().enumerate().find_map(|(i, path)| Some((self.offset_of(name, path)?, i)))
    }

    /// The struct or union a type id stands for, through typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..MAX_ALIAS_CHAIN {
            match self.aliases.get(&id) {
                Some(&next) => id = next,
                None => break,
            }
        }
        id
    }

    fn find_member(&self, struct_id: u32, field: &str, depth: u32, budget: &mut u32) -> Option<(u32, u32)> {
        let (_, members) = self.structs.get(&self.resolve(struct_id))?;
        *budget = budget.checked_sub(members.len() as u32)?;
        for m in members {
            if m.name == field {
                return Some((m.bit_offset, m.type_id));
            }
        }
        if depth > 4 {
            return None;
        }
        // Anonymous members: look inside.
        for m in members.iter().filter(|m| m.name.is_empty()) {
            if let Some((bits, ty)) = self.find_member(m.type_id, field, depth + 1, budget) {
                return Some((m.bit_offset.checked_add(bits)?, ty));
            }
        }
        None
    }
}

/// Where a task's scheduling state is: `__state` (u32) since 5.14, `state` (long) before; the
/// kernel reads its low 32 bits either way (little-endian).
pub const TASK_STATE_PATHS: &[&[&str]] = &[&["__state"], &["state"]];

/// Offset of the fs base register in `task_struct` (x86-64: `thread.fsbase`), or None.
pub fn fsbase_offset() -> Option<u32> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    KernelBtf::load()?.offset_of("task_struct", &["thread", "fsbase"])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A struct type: (name, [(member name, type id, bit offset)]).
    type Struct<'a> = (&'a str, &'a [(&'a str, u32, u32)]);

    /// A BTF blob of struct types.
    fn blob(structs: &[Struct<'_>]) -> Vec<u8> {
        blob_with_aliases(structs, &[])
    }

    /// A BTF blob of struct types (ids 1..), then alias records (kind, named type id) after them.
    fn blob_with_aliases(structs: &[Struct<'_>], aliases: &[(u32, u32)]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut name = |s: &str| {
            if s.is_empty() {
                return 0u32;
            }
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            off
        };
        let mut types = Vec::new();
        for (struct_name, members) in structs {
            types.extend(name(struct_name).to_le_bytes());
            types.extend(((KIND_STRUCT << 24) | members.len() as u32).to_le_bytes());
            types.extend(0u32.to_le_bytes());
            for (member, type_id, offset) in *members {
                types.extend(name(member).to_le_bytes());
                types.extend(type_id.to_le_bytes());
                types.extend(offset.to_le_bytes());
            }
        }
        for (kind, target) in aliases {
            types.extend(0u32.to_le_bytes());
            types.extend((kind << 24).to_le_bytes());
            types.extend(target.to_le_bytes());
        }
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for word in [24, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend(word.to_le_bytes());
        }
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn nested_and_anonymous_members() {
        let btf = blob(&[
            ("task_struct", &[("pid", 0, 64), ("", 3, 128), ("thread", 2, 1024)]),
            ("thread_struct", &[("sp", 0, 0), ("fsbase", 0, 64)]),
            ("", &[("tgid", 0, 32)]),
        ]);
        let btf = KernelBtf::parse(&btf).unwrap();
        assert_eq!(btf.offset_of("task_struct", &["pid"]), Some(8));
        assert_eq!(btf.offset_of("task_struct", &["tgid"]), Some(20), "through the anonymous member");
        assert_eq!(btf.offset_of("task_struct", &["thread", "fsbase"]), Some(136));
        assert_eq!(btf.offset_of("task_struct", &["nope"]), None);
    }

    /// 6.13+ `struct file`: `union { const struct path f_path; ... }`, and typedef'd structs: the
    /// member's type is a const or typedef record, which must be followed to the struct.
    #[test]
    fn members_behind_const_and_typedef() {
        // ids: 1 file, 2 anonymous union, 3 path; 4 = const → 3, 5 = typedef → 6, 6 = volatile → 3,
        // 7 = const → 7 (a loop, as a corrupt file may have).
        let btf = blob_with_aliases(
            &[
                ("file", &[("", 2, 0), ("f_inode", 0, 320), ("f_alias", 5, 512), ("f_loop", 7, 640)]),
                ("", &[("f_path", 4, 0), ("__f_path", 3, 0)]),
                ("path", &[("mnt", 0, 0), ("dentry", 0, 64)]),
            ],
            &[(KIND_CONST, 3), (KIND_TYPEDEF, 6), (KIND_VOLATILE, 3), (KIND_CONST, 7)],
        );
        let btf = KernelBtf::parse(&btf).unwrap();
        assert_eq!(btf.offset_of("file", &["f_path", "dentry"]), Some(8), "const struct in an anonymous union");
        assert_eq!(btf.offset_of("file", &["f_alias", "dentry"]), Some(72), "typedef of a volatile struct");
        assert_eq!(btf.offset_of("file", &["f_loop", "dentry"]), None, "an alias loop ends");
        assert_eq!(btf.offset_of_any("file", &[&["f_nope"], &["f_inode"]]), Some((40, 1)));
    }

    /// Found by the `kernel_btf` fuzzer: member bit offsets that add up past `u32` overflowed.
    #[test]
    fn offsets_past_u32_are_refused() {
        let btf = blob(&[
            ("task_struct", &[("thread", 2, u32::MAX - 7), ("", 3, u32::MAX)]),
            ("thread_struct", &[("fsbase", 0, 64)]),
            ("", &[("tgid", 0, 32)]),
        ]);
        let btf = KernelBtf::parse(&btf).unwrap();
        assert_eq!(btf.offset_of("task_struct", &["thread", "fsbase"]), None);
        assert_eq!(btf.offset_of("task_struct", &["tgid"]), None);
    }

    /// Found reviewing the reader for the fuzzers: anonymous members that are the struct
    /// itself made the search exponential (200 of them: 200^5 lookups).
    #[test]
    fn self_nesting_anonymous_members_are_bounded() {
        let members: Vec<(&str, u32, u32)> = (0..200).map(|_| ("", 1, 0)).collect();
        let btf = KernelBtf::parse(&blob(&[("task_struct", &members)])).unwrap();
        let start = std::time::Instant::now();
        assert_eq!(btf.offset_of("task_struct", &["pid"]), None);
        assert!(start.elapsed() < std::time::Duration::from_secs(1), "{:?}", start.elapsed());
    }

    #[test]
    fn finds_the_task_state_in_the_running_kernel() {
        let btf = KernelBtf::load().expect("/sys/kernel/btf/vmlinux");
        let (off, which) = btf.offset_of_any("task_struct", TASK_STATE_PATHS).expect("task_struct.__state or .state");
        // `__state` since 5.14 (this project's kernels are newer), right after thread_info and
        // a few words: well inside the struct's first cache line.
        assert_eq!(which, 0, "__state");
        assert!(off > 0 && off < 64, "implausible offset {off}");
    }

    #[test]
    fn finds_fsbase_in_the_running_kernel() {
        // Every kernel this project supports has BTF; a missing one is a real failure.
        let off = fsbase_offset().expect("task_struct.thread.fsbase in /sys/kernel/btf/vmlinux");
        assert!(off > 1000 && off.is_multiple_of(8), "implausible offset {off}");
        // What tells kernel threads apart (see `names::GLOBAL_TASK_FLAGS_OFFSET`): near the start.
        let flags = KernelBtf::load().unwrap().offset_of("task_struct", &["flags"]).expect("task_struct.flags");
        assert!(flags > 0 && flags < 256 && flags.is_multiple_of(4), "implausible offset {flags}");
    }
}
