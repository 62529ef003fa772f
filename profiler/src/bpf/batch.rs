//! Whole hash maps read in batches (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+), a few syscalls per
//! map instead of two per entry.
//!
//! aya 0.14 iterates a map with `BPF_MAP_GET_NEXT_KEY` then `BPF_MAP_LOOKUP_ELEM` per key: a
//! `--all` session reading `THREAD_TIMES` and `OFFCPU_SUMS` every housekeeping tick made
//! thousands of syscalls a second on a host with a few hundred threads. aya has no batch
//! operations, so the command is issued here with `libc::syscall`. A kernel or map type that
//! refuses it (`EINVAL`, `ENOTSUP`) is reported as `None` and the caller iterates instead.
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::Pod;
use aya::maps::{IterableMap, MapData};

/// `enum bpf_cmd`'s `BPF_MAP_LOOKUP_BATCH`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call; grown when a hash bucket holds more (`ENOSPC`).
const FIRST_CHUNK: u32 = 1024;

/// `union bpf_attr`'s `batch` member (the layout of `BPF_MAP_*_BATCH`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of a hash map, or `None` when the kernel cannot read it in batches.
pub fn read_all<K: Pod, V: Pod, M: IterableMap<K, V>>(map: &M) -> Option<Vec<(K, V)>> {
    let data: &MapData = map.map();
    let fd = data.fd().as_fd().as_raw_fd();
    // The batch token: a u32 bucket index for hash maps (a key for other types); 8-aligned and
    // larger than any key read here.
    let mut tokens = [[0u64; 8]; 2];
    let mut out = Vec::new();
    let mut chunk = FIRST_CHUNK;
    let mut first = true;
    loop {
        let mut keys: Vec<K> = vec![zeroed(); chunk as usize];
        let mut values: Vec<V> = vec![zeroed(); chunk as usize];
        let [in_token, out_token] = &mut tokens;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { in_token.as_ptr() as u64 },
            out_batch: out_token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd as u32,
            ..Default::default()
        };
        let attr_ptr: *mut BatchAttr = &mut attr;
        // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; the key and value
        // buffers hold `count` elements of the map's own key and value types (aya checked
        // their sizes when the map was opened), the tokens 64 bytes each.
        let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, attr_ptr, size_of::<BatchAttr>()) };
        let err = (r < 0).then(std::io::Error::last_os_error);
        match err.as_ref().and_then(std::io::Error::raw_os_error) {
            // ENOENT: this was the last batch (possibly with entries in it).
            None | Some(libc::ENOENT) => {
                let n = (attr.count.min(chunk)) as usize;
                out.extend(keys.into_iter().zip(values).take(n));
                if err.is_some() {
                    return Some(out);
                }
                *in_token = *out_token;
                first = false;
            }
            // A bucket holds more entries than fit: ask again with room for them.
            Some(libc::ENOSPC) if chunk < 1 << 20 => chunk *= 4,
            Some(e) => {
                log::debug!("BPF_MAP_LOOKUP_BATCH: {}", std::io::Error::from_raw_os_error(e));
                return None;
            }
        }
    }
}

fn zeroed<T: Pod>() -> T {
    // SAFETY: `Pod` types are plain data, valid for any bit pattern, zero included.
    unsafe { std::mem::zeroed() }
}
