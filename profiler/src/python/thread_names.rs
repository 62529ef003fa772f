//! Python-level thread names (`threading.Thread.name`), read from outside a live CPython process
//! without stopping it.
//!
//! The kernel only knows a thread's `comm`; the name a program gives a Python thread lives in the
//! `threading` module. `threading._active` maps the ident of every running thread to its `Thread`
//! object, whose instance attributes `_name` (a str) and `_native_id` (an int: the kernel TID,
//! set by the thread itself as it starts, since 3.8) are what we want. The walk is
//!
//! `_PyRuntime` → main interpreter → `sys.modules` → `"threading"` → the module's `__dict__` →
//! `"_active"` (plus `"_main_thread"`) → each `Thread`'s attributes `_name` and `_native_id`.
//!
//! Where an instance keeps its attributes changed a lot between versions:
//! - 3.8–3.10: a dict whose pointer is at `tp_dictoffset` in the object;
//! - 3.11: managed dict: a values array (keyed by the type's cached keys) in the pre-header
//!   before the object, replaced by a dict pointer in the next slot once one is materialized;
//! - 3.12: one pre-header slot holding either a dict or a tagged values pointer;
//! - 3.13: values inline after the object header, or a dict pointer in the pre-header.
//!
//! Every read is a `process_vm_readv` of a process that keeps running, so any object may change
//! or be freed between two reads. All loops and sizes are bounded, each table is copied between
//! two reads of the pointers that lead to it and kept only if they agree (a dict resized
//! meanwhile is read again), and objects are type-checked before they are decoded. Failures give
//! an empty or partial map, never a panic.
use std::collections::HashMap;

use super::{PyVersion, code::read_unicode, offsets::PyOffsets};
use crate::host::memory::{ReadMemory, field_i32, field_u64};

/// Interpreters followed along `PyInterpreterState.next` before giving up (a cycle in garbage).
const MAX_INTERPRETERS: usize = 256;
/// Largest dict we copy (entries used, deleted ones included). `sys.modules` of a big
/// application has a few thousand.
const MAX_DICT_ENTRIES: usize = 1 << 16;
/// Threads named at most.
const MAX_THREADS: usize = 1 << 14;
/// Attempts at reading a table consistently while the target mutates it.
const SNAPSHOT_ATTEMPTS: usize = 4;
/// Digits of an int we decode: enough for any i64 even with 15-bit digits; a TID needs two.
const MAX_INT_DIGITS: usize = 5;

/// Kernel TID → Python thread name for every thread the `threading` module knows about (started
/// through it, or registered as a dummy thread by calling into it). Empty when anything on the
/// way cannot be read: the process exited, `threading` was never imported, or its memory is not
/// what the layout says.
pub fn thread_names(
    mem: &impl ReadMemory,
    o: &PyOffsets,
    version: PyVersion,
    runtime_addr: u64,
) -> HashMap<u32, String> {
    // `_native_id` exists from 3.8, which is also where the layout table starts.
    if version.major != 3 || version.minor < 8 {
        return HashMap::new();
    }
    read_thread_names(mem, o, runtime_addr).unwrap_or_default()
}

fn read_thread_names(mem: &impl ReadMemory, o: &PyOffsets, runtime_addr: u64) -> Option<HashMap<u32, String>> {
    let interp = main_interpreter(mem, o, runtime_addr)?;
    let modules = read_ptr(mem, interp, o.interp_modules)?;
    let [threading] = dict_lookup(mem, o, modules, ["threading"])?;
    let globals = read_ptr(mem, threading?, o.module_dict)?;
    let [active, main_thread] = dict_lookup(mem, o, globals, ["_active", "_main_thread"])?;
    let mut threads: Vec<u64> =
        active.and_then(|active| dict_items(mem, o, active)).unwrap_or_default().into_iter().map(|(_, t)| t).collect();
    // The main thread is in `_active` too, but found in the same pass over the module's dict it
    // keeps its name when `_active` changes too fast to copy (threads starting and exiting).
    if let Some(main) = main_thread
        && !threads.contains(&main)
    {
        threads.push(main);
    }
    let names = threads.into_iter().take(MAX_THREADS).filter_map(|thread| thread_identity(mem, o, thread)).collect();
    Some(names)
}

/// The main interpreter: the list at `interpreters.head` is newest first, so it is the last one.
pub(super) fn main_interpreter(mem: &impl ReadMemory, o: &PyOffsets, runtime_addr: u64) -> Option<u64> {
    let mut interp = read_ptr(mem, runtime_addr, o.runtime_interpreters_head)?;
    for _ in 0..MAX_INTERPRETERS {
        match read_ptr(mem, interp, o.interp_next) {
            Some(next) => interp = next,
            None => return Some(interp),
        }
    }
    None
}

/// A `Thread` object's (TID, name), if it has started (`_native_id` is an int by then).
fn thread_identity(mem: &impl ReadMemory, o: &PyOffsets, thread: u64) -> Option<(u32, String)> {
    let attributes = attribute_items(mem, o, thread)?;
    let [name, native_id] = find_str_keys(mem, o, &attributes, ["_name", "_native_id"]);
    let tid = u32::try_from(read_int(mem, o, native_id?)?).ok().filter(|&tid| tid > 0)?;
    let name = read_str(mem, o, name?)?;
    Some((tid, name))
}

/// A non-NULL pointer field of the struct at `base`.
pub(super) fn read_ptr(mem: &impl ReadMemory, base: u64, offset: i64) -> Option<u64> {
    let offset = u64::try_from(offset).ok()?;
    mem.u64(base.checked_add(offset)?).filter(|&p| p != 0)
}

/// Reads `read(state)` between two reads of `state` (the pointers that lead to the data) and
/// keeps it only if they agree, so a table that was replaced meanwhile (a dict resized, an
/// instance's attributes moved into a dict) is read again rather than mixed with the new one.
fn consistent<S: PartialEq, T>(
    mut state: impl FnMut() -> Option<S>,
    mut read: impl FnMut(&S) -> Option<T>,
) -> Option<T> {
    for _ in 0..SNAPSHOT_ATTEMPTS {
        let before = state()?;
        let Some(value) = read(&before) else { continue };
        if state()? == before {
            return Some(value);
        }
    }
    None
}

// ---- types -------------------------------------------------------------------------------------

/// What the walk needs from an object's type.
#[derive(Clone, Copy, Debug)]
struct TypeInfo {
    addr: u64,
    flags: u64,
    dictoffset: i64,
    /// `tp_basicsize`, right after `tp_name` in every version: where 3.13+ inline values start.
    basicsize: u64,
}

fn read_type(mem: &impl ReadMemory, o: &PyOffsets, obj: u64) -> Option<TypeInfo> {
    let addr = read_ptr(mem, obj, o.object_type)?;
    // Only the fields we use: a static type object may end soon after them.
    let len = o.type_flags.max(o.type_dictoffset).max(o.type_name + 8) as usize + 8;
    let raw = mem.bytes(addr, len)?;
    Some(TypeInfo {
        addr,
        flags: field_u64(&raw, o.type_flags)?,
        dictoffset: field_u64(&raw, o.type_dictoffset)? as i64,
        basicsize: field_u64(&raw, o.type_name + 8)?,
    })
}

/// Is `flag` (a `type_flag_*` field; absent is -1) set in `flags`?
fn has_flag(flags: u64, flag: i64) -> bool {
    flag > 0 && flags & flag as u64 != 0
}

/// Does `obj`'s type have `flag` (e.g. is it a str, an int, a dict, or a subclass of one)?
fn is_a(mem: &impl ReadMemory, o: &PyOffsets, obj: u64, flag: i64) -> bool {
    read_type(mem, o, obj).is_some_and(|ty| has_flag(ty.flags, flag))
}

// ---- str and int -------------------------------------------------------------------------------

/// A str object's text, after checking it is one.
pub(super) fn read_str(mem: &impl ReadMemory, o: &PyOffsets, addr: u64) -> Option<String> {
    if !is_a(mem, o, addr, o.type_flag_unicode_subclass) {
        return None;
    }
    read_unicode(mem, o, addr)
}

/// Length of a compact ASCII str from its `PyASCIIObject` header; None for any other kind, which
/// can never equal the ASCII names we look for.
fn ascii_len(o: &PyOffsets, head: &[u8]) -> Option<usize> {
    let length = usize::try_from(field_u64(head, o.unicode_length)?).ok()?;
    let state = field_i32(head, o.unicode_state)? as u32;
    let compact = (state >> o.unicode_compact_shift) & 1 == 1;
    let ascii = (state >> o.unicode_ascii_shift) & 1 == 1;
    (compact && ascii).then_some(length)
}

/// Is the object at `addr` the str `want` (ASCII)? Dict keys are compared by content since the
/// target's string hashes are seeded per process. Cheap on mismatch: the header alone rules out
/// most keys by length; only a full match pays for the type check.
pub(super) fn str_is(mem: &impl ReadMemory, o: &PyOffsets, addr: u64, want: &str) -> bool {
    let Some(head) = mem.bytes(addr, o.unicode_ascii_data as usize) else { return false };
    if ascii_len(o, &head) != Some(want.len()) {
        return false;
    }
    mem.bytes(addr + o.unicode_ascii_data as u64, want.len()).is_some_and(|text| text == want.as_bytes())
        && is_a(mem, o, addr, o.type_flag_unicode_subclass)
}

/// Sign (1, 0 or -1) and digit count of an int, from the header up to its digits.
fn int_sign_and_len(o: &PyOffsets, head: &[u8]) -> Option<(i64, usize)> {
    if o.long_tag >= 0 {
        // 3.12+: lv_tag = digit count << NON_SIZE_BITS | sign bits (0 positive, 1 zero, 2 negative).
        let tag = field_u64(head, o.long_tag)?;
        let sign = 1 - (tag & o.long_tag_sign_mask as u64) as i64;
        Some((sign, usize::try_from(tag >> o.long_tag_size_shift).ok()?))
    } else {
        // Up to 3.11: ob_size is the digit count, negated for negative numbers.
        let size = field_u64(head, o.long_size)? as i64;
        Some((size.signum(), usize::try_from(size.unsigned_abs()).ok()?))
    }
}

/// Combines little-endian digits of `bits` bits each into a signed value; None on overflow or
/// a digit wider than `bits` (not an int after all).
fn combine_digits(digits: &[u32], bits: u32, sign: i64) -> Option<i64> {
    if !(1..32).contains(&bits) {
        return None;
    }
    let mut magnitude: u128 = 0;
    for (i, &digit) in digits.iter().enumerate() {
        let shift = u32::try_from(i).ok()?.checked_mul(bits)?;
        if digit >> bits != 0 || (digit != 0 && shift >= 64) {
            return None;
        }
        if digit != 0 {
            // shift < 64 and digit < 2^31: no bit is lost in 128 bits.
            magnitude |= u128::from(digit) << shift;
        }
    }
    Some(sign * i64::try_from(magnitude).ok()?)
}

/// An int's value, if it is an int that fits in i64 (a bool is an int too; fine for a TID).
pub(super) fn read_int(mem: &impl ReadMemory, o: &PyOffsets, addr: u64) -> Option<i64> {
    if !is_a(mem, o, addr, o.type_flag_long_subclass) {
        return None;
    }
    // Header first: reading digits that are not there could run off the end of a mapping.
    let head = mem.bytes(addr, o.long_digits as usize)?;
    let (sign, len) = int_sign_and_len(o, &head)?;
    if len > MAX_INT_DIGITS {
        return None;
    }
    let raw = mem.bytes(addr + o.long_digits as u64, len * 4)?;
    let digits: Vec<u32> = raw.chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
    combine_digits(&digits, o.long_digit_bits as u32, sign)
}

// ---- dicts -------------------------------------------------------------------------------------

/// Where a keys object's entries are and how to read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntryLayout {
    /// Offset of the first entry from the keys object.
    start: u64,
    /// Entries used so far (`dk_nentries`), deleted ones included.
    count: usize,
    size: usize,
    key: usize,
    value: usize,
}

/// Width of one slot of a 3.8–3.10 index table, which grows with the table.
fn index_width(slots: u64) -> u64 {
    match slots {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    }
}

/// Entry layout from a keys object's header (everything before `dk_indices`), after checking
/// the header is one a dict could have.
fn entry_layout(o: &PyOffsets, head: &[u8]) -> Option<EntryLayout> {
    let count = usize::try_from(field_u64(head, o.dict_keys_nentries)? as i64).ok()?;
    let (slots, index_bytes, unicode) = if o.dict_keys_size >= 0 {
        // 3.8–3.10: dk_size slots, each as wide as the table needs.
        let slots = field_u64(head, o.dict_keys_size)?;
        if !slots.is_power_of_two() || slots > 1 << 32 {
            return None;
        }
        (slots, slots * index_width(slots), false)
    } else {
        // 3.11+: sizes as log2; the kind says which entry struct follows.
        let byte = |off: i64| head.get(usize::try_from(off).ok()?).copied();
        let log2_size = u32::from(byte(o.dict_keys_log2_size)?);
        let log2_index_bytes = u32::from(byte(o.dict_keys_log2_index_bytes)?);
        // An index is 1 to 8 bytes wide.
        if log2_size > 32 || !(log2_size..=log2_size + 3).contains(&log2_index_bytes) {
            return None;
        }
        let unicode = i64::from(byte(o.dict_keys_kind)?) != o.dict_keys_kind_general;
        (1u64 << log2_size, 1u64 << log2_index_bytes, unicode)
    };
    // A table only has room for 2/3 of its slots as entries; more than all of them is garbage.
    if count as u64 > slots || count > MAX_DICT_ENTRIES {
        return None;
    }
    let (size, key, value) = if unicode {
        (o.dict_unicode_entry_size, o.dict_unicode_entry_key, o.dict_unicode_entry_value)
    } else {
        (o.dict_entry_size, o.dict_entry_key, o.dict_entry_value)
    };
    Some(EntryLayout {
        start: o.dict_keys_indices as u64 + index_bytes,
        count,
        size: usize::try_from(size).ok()?,
        key: usize::try_from(key).ok()?,
        value: usize::try_from(value).ok()?,
    })
}

/// The live (key, value) pairs of copied entries. A split table's values come from its own
/// array (in entry order), a combined table's from the entries; NULL keys or values are deleted
/// or unset entries.
fn live_pairs(layout: &EntryLayout, entries: &[u8], values: Option<&[u8]>) -> Vec<(u64, u64)> {
    let word = |buf: &[u8], at: usize| Some(u64::from_ne_bytes(buf.get(at..at + 8)?.try_into().ok()?));
    (0..layout.count)
        .filter_map(|i| {
            let entry = i * layout.size;
            let key = word(entries, entry + layout.key)?;
            let value = match values {
                Some(values) => word(values, i * 8)?,
                None => word(entries, entry + layout.value)?,
            };
            (key != 0 && value != 0).then_some((key, value))
        })
        .collect()
}

/// A split table's values array: its address and how many slots it has (3.13 records its
/// capacity; before, it always has room for every entry of its keys).
fn values_array(mem: &impl ReadMemory, o: &PyOffsets, values: u64) -> Option<(u64, usize)> {
    let capacity = if o.dict_values_capacity >= 0 {
        usize::from(mem.bytes(values.checked_add(o.dict_values_capacity as u64)?, 1)?[0])
    } else {
        usize::MAX
    };
    Some((values.checked_add(o.dict_values_array as u64)?, capacity))
}

/// The live pairs of a keys object, with a split table's values array if there is one.
fn table_items(
    mem: &impl ReadMemory,
    o: &PyOffsets,
    keys: u64,
    values: Option<(u64, usize)>,
) -> Option<Vec<(u64, u64)>> {
    let head = mem.bytes(keys, o.dict_keys_indices as usize)?;
    let mut layout = entry_layout(o, &head)?;
    let values = match values {
        Some((array, capacity)) => {
            layout.count = layout.count.min(capacity);
            Some(mem.bytes(array, layout.count * 8)?)
        }
        None => None,
    };
    let entries = mem.bytes(keys.checked_add(layout.start)?, layout.count * layout.size)?;
    Some(live_pairs(&layout, &entries, values.as_deref()))
}

/// The pointers that lead to a dict's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DictHeader {
    used: u64,
    keys: u64,
    values: u64,
}

fn read_dict_header(mem: &impl ReadMemory, o: &PyOffsets, dict: u64) -> Option<DictHeader> {
    let len = o.dict_used.max(o.dict_keys).max(o.dict_values) as usize + 8;
    let raw = mem.bytes(dict, len)?;
    Some(DictHeader {
        used: field_u64(&raw, o.dict_used)?,
        keys: field_u64(&raw, o.dict_keys)?,
        values: field_u64(&raw, o.dict_values)?,
    })
}

/// A dict's live (key, value) pairs, as one consistent snapshot.
pub(super) fn dict_items(mem: &impl ReadMemory, o: &PyOffsets, dict: u64) -> Option<Vec<(u64, u64)>> {
    if !is_a(mem, o, dict, o.type_flag_dict_subclass) {
        return None;
    }
    consistent(
        || read_dict_header(mem, o, dict),
        |header| {
            let values = match header.values {
                0 => None,
                values => Some(values_array(mem, o, values)?),
            };
            let items = table_items(mem, o, header.keys, values)?;
            // Entries added or removed while we copied: the count will not match.
            (items.len() as u64 == header.used).then_some(items)
        },
    )
}

/// The values stored under each of `names` (str keys) among `items`.
pub(super) fn find_str_keys<const N: usize>(
    mem: &impl ReadMemory,
    o: &PyOffsets,
    items: &[(u64, u64)],
    names: [&str; N],
) -> [Option<u64>; N] {
    let mut found = [None; N];
    // Every key's header and the first bytes of its text, in one vectored read: a key whose
    // length or text differs is ruled out without a read of its own (a module's globals have
    // a hundred keys and more). A key that could not be read so is compared as before.
    let head = usize::try_from(o.unicode_ascii_data).unwrap_or(0);
    let width = head + names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut copies = vec![0u8; items.len() * width];
    let read = {
        let mut reads: Vec<(u64, &mut [u8])> =
            items.iter().map(|&(key, _)| key).zip(copies.chunks_exact_mut(width.max(1))).collect();
        mem.read_each(&mut reads)
    };
    for (i, &(key, value)) in items.iter().enumerate() {
        let copy = copies.get(i * width..(i + 1) * width);
        let is = |want: &str| match (read.get(i), copy) {
            (Some(true), Some(copy)) => {
                ascii_len(o, &copy[..head]) == Some(want.len())
                    && &copy[head..head + want.len()] == want.as_bytes()
                    && is_a(mem, o, key, o.type_flag_unicode_subclass)
            }
            _ => str_is(mem, o, key, want),
        };
        if let Some(n) = (0..N).find(|&n| found[n].is_none() && is(names[n])) {
            found[n] = Some(value);
            if found.iter().all(Option::is_some) {
                break;
            }
        }
    }
    found
}

/// Looks `names` up in the dict at `dict`; None if it cannot be read as a dict.
pub(super) fn dict_lookup<const N: usize>(
    mem: &impl ReadMemory,
    o: &PyOffsets,
    dict: u64,
    names: [&str; N],
) -> Option<[Option<u64>; N]> {
    Some(find_str_keys(mem, o, &dict_items(mem, o, dict)?, names))
}

/// What changes whenever a key is added to a dict: its keys object (replaced when the table
/// grows), the entries used in it (appended to, never reused before a resize) and its live
/// count. Two reads, where a look-up by name reads every key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DictMark {
    keys: u64,
    entries: usize,
    used: u64,
}

/// The [`DictMark`] of the dict at `dict` now; None if it cannot be read as one.
pub(super) fn dict_mark(mem: &impl ReadMemory, o: &PyOffsets, dict: u64) -> Option<DictMark> {
    let header = read_dict_header(mem, o, dict)?;
    let head = mem.bytes(header.keys, o.dict_keys_indices as usize)?;
    Some(DictMark { keys: header.keys, entries: entry_layout(o, &head)?.count, used: header.used })
}

// ---- instance attributes -----------------------------------------------------------------------

/// Where an instance's attributes are at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attributes {
    /// No attributes yet (or a type without a `__dict__`).
    None,
    /// A `__dict__`.
    Dict(u64),
    /// 3.11+: values without a dict, keyed by the type's cached keys. `values` is what a
    /// `PyDictValues*` would point to.
    Values { keys: u64, values: u64 },
}

/// Finds an instance's attribute table.
fn locate_attributes(mem: &impl ReadMemory, o: &PyOffsets, obj: u64) -> Option<Attributes> {
    let ty = read_type(mem, o, obj)?;
    if has_flag(ty.flags, o.type_flag_managed_dict) {
        return locate_managed(mem, o, obj, &ty);
    }
    // A dict pointer at tp_dictoffset (3.8–3.10, and types without a managed dict). A negative
    // offset counts from the end of a variable-size object; Thread objects never are one.
    match ty.dictoffset {
        0 => Some(Attributes::None),
        offset if offset > 0 => Some(dict_or_none(mem.u64(obj.checked_add(offset as u64)?)?)),
        _ => None,
    }
}

fn dict_or_none(dict: u64) -> Attributes {
    if dict == 0 { Attributes::None } else { Attributes::Dict(dict) }
}

/// 3.11+ managed dicts: the pre-header before the object, or 3.13 inline values after it.
fn locate_managed(mem: &impl ReadMemory, o: &PyOffsets, obj: u64, ty: &TypeInfo) -> Option<Attributes> {
    let slot = |before: i64| mem.u64(obj.checked_sub(u64::try_from(before).ok()?)?);
    let mut dict = slot(o.object_managed_dict_before)?;
    let mut values = 0;
    if o.object_managed_values_tag > 0 {
        // 3.12: one slot; a set tag bit marks a values pointer, stored minus the tag.
        let tag = o.object_managed_values_tag as u64;
        if dict & tag != 0 {
            values = dict.wrapping_add(tag);
            dict = 0;
        }
    } else if o.object_managed_values_before > 0 {
        // 3.11: values in their own slot, NULL once the attributes moved into a dict.
        values = slot(o.object_managed_values_before)?;
    }
    if values == 0 && dict == 0 && has_flag(ty.flags, o.type_flag_inline_values) && o.object_inline_values >= 0 {
        // 3.13: inline values, unless they were given up for a combined dict. They follow the
        // instance's own fields, at `tp_basicsize` (CPython's `_PyObject_InlineValues`): past
        // the object header for a plain class, further for one with `__slots__` in a base (an
        // asyncio transport) or deriving from a C type (3.14's `_GatheringFuture`).
        let at = if ty.basicsize.is_multiple_of(8) && (o.object_inline_values as u64..1 << 16).contains(&ty.basicsize) {
            ty.basicsize
        } else {
            o.object_inline_values as u64
        };
        let inline = obj.checked_add(at)?;
        if mem.bytes(inline.checked_add(o.dict_values_valid as u64)?, 1)?[0] != 0 {
            values = inline;
        }
    }
    if values != 0 {
        if !has_flag(ty.flags, o.type_flag_heaptype) {
            return None;
        }
        let keys = read_ptr(mem, ty.addr, o.heap_type_cached_keys)?;
        return Some(Attributes::Values { keys, values });
    }
    Some(dict_or_none(dict))
}

/// An instance's attributes as (name, value) pairs, as one consistent snapshot.
pub(super) fn attribute_items(mem: &impl ReadMemory, o: &PyOffsets, obj: u64) -> Option<Vec<(u64, u64)>> {
    consistent(
        || locate_attributes(mem, o, obj),
        |attributes| match *attributes {
            Attributes::None => Some(Vec::new()),
            Attributes::Dict(dict) => dict_items(mem, o, dict),
            Attributes::Values { keys, values } => table_items(mem, o, keys, Some(values_array(mem, o, values)?)),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::offsets::for_version;
    use super::*;

    /// Every layout of the table, free-threaded ones included.
    fn layouts() -> impl Iterator<Item = (u8, &'static PyOffsets)> {
        super::super::offsets::table().iter().map(|((_, minor, free_threaded), _)| {
            (*minor, for_version(3, *minor, *free_threaded).expect("in the table"))
        })
    }

    fn put(buf: &mut [u8], off: i64, bytes: &[u8]) {
        let off = off as usize;
        buf[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// A keys header with `slots` slots and `count` entries, in `o`'s layout.
    fn keys_head(o: &PyOffsets, slots: u64, count: u64, general: bool) -> Vec<u8> {
        let mut head = vec![0u8; o.dict_keys_indices as usize];
        put(&mut head, o.dict_keys_nentries, &count.to_ne_bytes());
        if o.dict_keys_size >= 0 {
            put(&mut head, o.dict_keys_size, &slots.to_ne_bytes());
        } else {
            let log2 = slots.trailing_zeros() as u8;
            put(&mut head, o.dict_keys_log2_size, &[log2]);
            put(&mut head, o.dict_keys_log2_index_bytes, &[log2 + index_width(slots).trailing_zeros() as u8]);
            let kind = if general { o.dict_keys_kind_general } else { o.dict_keys_kind_general + 1 };
            put(&mut head, o.dict_keys_kind, &[kind as u8]);
        }
        head
    }

    #[test]
    fn index_width_grows_with_the_table() {
        assert_eq!(index_width(8), 1);
        assert_eq!(index_width(0xff), 1);
        assert_eq!(index_width(0x100), 2);
        assert_eq!(index_width(0x1_0000), 4);
        assert_eq!(index_width(0x1_0000_0000), 8);
    }

    #[test]
    fn entries_follow_the_index_table() {
        for (minor, o) in layouts() {
            for (slots, general) in [(8, false), (8, true), (1024, false)] {
                let layout = entry_layout(o, &keys_head(o, slots, 5, general)).unwrap();
                let index_bytes = slots * index_width(slots);
                assert_eq!(layout.start, o.dict_keys_indices as u64 + index_bytes, "3.{minor}");
                assert_eq!(layout.count, 5);
                // Only 3.11+ has the two-word entries of str-keyed tables.
                let unicode = minor >= 11 && !general;
                assert_eq!(layout.size, if unicode { 16 } else { 24 }, "3.{minor}");
                assert_eq!(layout.key, if unicode { 0 } else { 8 }, "3.{minor}");
            }
        }
    }

    #[test]
    fn implausible_keys_headers_are_rejected() {
        for (minor, o) in layouts() {
            assert!(entry_layout(o, &keys_head(o, 8, 9, true)).is_none(), "3.{minor}: more entries than slots");
            assert!(entry_layout(o, &[]).is_none(), "3.{minor}: short header");
            let mut head = keys_head(o, 8, 1, true);
            if o.dict_keys_size >= 0 {
                put(&mut head, o.dict_keys_size, &12u64.to_ne_bytes());
            } else {
                put(&mut head, o.dict_keys_log2_index_bytes, &[0]);
            }
            assert!(entry_layout(o, &head).is_none(), "3.{minor}: bad size");
        }
    }

    #[test]
    fn live_pairs_skip_deleted_entries_and_use_split_values() {
        let layout = EntryLayout { start: 0, count: 3, size: 24, key: 8, value: 16 };
        let mut entries = vec![0u8; 72];
        for (i, (key, value)) in [(0x10u64, 0x11u64), (0, 0), (0x30, 0x31)].into_iter().enumerate() {
            put(&mut entries, (i * 24 + 8) as i64, &key.to_ne_bytes());
            put(&mut entries, (i * 24 + 16) as i64, &value.to_ne_bytes());
        }
        assert_eq!(live_pairs(&layout, &entries, None), vec![(0x10, 0x11), (0x30, 0x31)]);
        let values: Vec<u8> = [0xa1u64, 0xa2, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
        assert_eq!(live_pairs(&layout, &entries, Some(&values)), vec![(0x10, 0xa1)]);
        // A short copy yields what it holds, no more.
        assert_eq!(live_pairs(&layout, &entries[..30], None), vec![(0x10, 0x11)]);
    }

    #[test]
    fn ints_decode_in_both_encodings() {
        for (minor, o) in layouts() {
            let mut head = vec![0u8; o.long_digits as usize];
            let mut set = |sign: i64, len: u64| {
                if o.long_tag >= 0 {
                    let bits = (1 - sign) as u64;
                    put(&mut head, o.long_tag, &(len << o.long_tag_size_shift | bits).to_ne_bytes());
                } else {
                    put(&mut head, o.long_size, &(sign * len as i64).to_ne_bytes());
                }
                int_sign_and_len(o, &head)
            };
            assert_eq!(set(1, 2), Some((1, 2)), "3.{minor}");
            assert_eq!(set(0, 0), Some((0, 0)), "3.{minor}");
            assert_eq!(set(-1, 1), Some((-1, 1)), "3.{minor}");
        }
        assert_eq!(combine_digits(&[12345], 30, 1), Some(12345));
        assert_eq!(combine_digits(&[5, 1], 30, -1), Some(-(5 + (1 << 30))));
        assert_eq!(combine_digits(&[], 30, 0), Some(0));
        assert_eq!(combine_digits(&[1 << 30], 30, 1), None, "digit wider than 30 bits");
        assert_eq!(combine_digits(&[0, 0, 1 << 3], 30, 1), None, "overflows i64");
        assert_eq!(combine_digits(&[u32::MAX >> 2, u32::MAX >> 2, 7], 30, 1), Some(i64::MAX));
    }

    #[test]
    fn ascii_length_only_for_compact_ascii() {
        for (minor, o) in layouts() {
            let mut head = vec![0u8; o.unicode_ascii_data as usize];
            put(&mut head, o.unicode_length, &7u64.to_ne_bytes());
            let compact_ascii =
                1u32 << o.unicode_compact_shift | 1 << o.unicode_ascii_shift | 1 << o.unicode_kind_shift;
            put(&mut head, o.unicode_state, &compact_ascii.to_ne_bytes());
            assert_eq!(ascii_len(o, &head), Some(7), "3.{minor}");
            put(&mut head, o.unicode_state, &(1u32 << o.unicode_compact_shift).to_ne_bytes());
            assert_eq!(ascii_len(o, &head), None, "3.{minor}");
        }
    }

    #[test]
    fn consistent_retries_until_the_state_holds() {
        let mut generation = 0;
        let mut reads = 0;
        let got = consistent(
            || {
                generation += 1;
                Some(generation.min(3))
            },
            |_| {
                reads += 1;
                Some(reads)
            },
        );
        // Attempts 1 (states 1, 2) and 2 (3, 3): the second read is kept.
        assert_eq!(got, Some(2));
        let never = consistent(
            || {
                generation += 1;
                Some(generation)
            },
            |_| Some(()),
        );
        assert_eq!(never, None);
    }

    /// Builds a dict, its keys, str keys and their types in this process's memory, in each
    /// version's layout, and looks the keys up with the reader.
    #[test]
    fn dict_lookup_in_own_memory() {
        let mem = crate::host::memory::Memory::new(std::process::id());
        for (minor, o) in layouts() {
            let words = |n: usize| vec![0u64; n];
            let addr = |v: &Vec<u64>| v.as_ptr() as u64;
            let set = |v: &mut Vec<u64>, off: i64, value: u64| v[off as usize / 8] = value;

            let mut str_type = words(64);
            set(&mut str_type, o.type_flags, o.type_flag_unicode_subclass as u64);
            let mut dict_type = words(64);
            set(&mut dict_type, o.type_flags, o.type_flag_dict_subclass as u64);

            let make_str = |text: &str| {
                let mut s = words(16);
                set(&mut s, o.object_type, addr(&str_type));
                set(&mut s, o.unicode_length, text.len() as u64);
                let state = 1u32 << o.unicode_compact_shift | 1 << o.unicode_ascii_shift | 1 << o.unicode_kind_shift;
                let bytes: &mut [u8] = bytemuck_bytes(&mut s);
                put(bytes, o.unicode_state, &state.to_ne_bytes());
                put(bytes, o.unicode_ascii_data, text.as_bytes());
                s
            };
            let names = ["alpha", "_name", "_native_id", "gone"];
            let strs: Vec<Vec<u64>> = names.iter().map(|n| make_str(n)).collect();

            let slots = 8u64;
            let head = keys_head(o, slots, names.len() as u64, false);
            let layout = entry_layout(o, &head).unwrap();
            let mut keys = words(64);
            bytemuck_bytes(&mut keys)[..head.len()].copy_from_slice(&head);
            for (i, s) in strs.iter().enumerate() {
                let entry = (layout.start as usize + i * layout.size) as i64;
                let value = if names[i] == "gone" { 0 } else { 0x1000 + i as u64 };
                set(&mut keys, entry + layout.key as i64, addr(s));
                set(&mut keys, entry + layout.value as i64, value);
            }
            let mut dict = words(8);
            set(&mut dict, o.object_type, addr(&dict_type));
            set(&mut dict, o.dict_used, 3);
            set(&mut dict, o.dict_keys, addr(&keys));

            let found = dict_lookup(&mem, o, addr(&dict), ["_native_id", "_name", "gone", "missing"]);
            assert_eq!(found, Some([Some(0x1002), Some(0x1001), None, None]), "3.{minor}");
            // The mark holds while nothing is added, and changes when an entry is appended (even
            // with the live count unchanged: one deleted, one added) or the keys are replaced.
            let mark = dict_mark(&mem, o, addr(&dict)).expect("a dict's mark");
            assert_eq!(dict_mark(&mem, o, addr(&dict)), Some(mark), "3.{minor}");
            let appended = keys_head(o, slots, names.len() as u64 + 1, false);
            bytemuck_bytes(&mut keys)[..appended.len()].copy_from_slice(&appended);
            assert_ne!(dict_mark(&mem, o, addr(&dict)), Some(mark), "3.{minor}");
            bytemuck_bytes(&mut keys)[..head.len()].copy_from_slice(&head);
            assert_eq!(dict_mark(&mem, o, addr(&dict)), Some(mark), "3.{minor}");
            let moved = keys.clone();
            set(&mut dict, o.dict_keys, addr(&moved));
            assert_ne!(dict_mark(&mem, o, addr(&dict)), Some(mark), "3.{minor}");
            set(&mut dict, o.dict_keys, addr(&keys));
            // ma_used disagreeing with the entries reads as a dict changing under us.
            set(&mut dict, o.dict_used, 4);
            assert_eq!(dict_lookup(&mem, o, addr(&dict), ["_name"]), None, "3.{minor}");
            // Not a dict at all.
            set(&mut dict, o.dict_used, 3);
            set(&mut dict, o.object_type, addr(&str_type));
            assert_eq!(dict_lookup(&mem, o, addr(&dict), ["_name"]), None, "3.{minor}");
        }
    }

    fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
        // SAFETY: u64 has no padding and any byte pattern is a valid u64.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
    }
}
