//! Sends a sample: packs the filled parts of the scratch record's stacks into this CPU's
//! `SAMPLE_OUT` record and copies only those bytes to the ring buffer, not the 6.2 KB of fixed
//! arrays the sample was built in (layout: `profiler_common::sample_record`).
use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_RB_NO_WAKEUP, helpers::generated::bpf_probe_read_kernel, macros::map, maps::PerCpuArray};
use profiler_common::{
    SampleEvent,
    sample_record::{PY_FRAME_BYTES, SampleHead, SampleRecord},
    scratch_slot,
};

use crate::{maps::EVENTS, stacks};

/// Where a sample is packed before it is sent, one per scratch slot like the record it is
/// built in: an on-CPU sample can interrupt a `sys_exit` program sending on the same CPU.
#[map]
static SAMPLE_OUT: PerCpuArray<SampleRecord> = PerCpuArray::with_max_entries(scratch_slot::COUNT, 0);

/// Copies `bytes` bytes from `src` to `words` 8-byte words into `body`: one helper call, the
/// copy in the kernel's fault-safe `memcpy` with no per-word loop for the verifier. Made even
/// for 0 bytes (the parts often empty: the kernel stack without `--kernel`, the CFAs of a
/// frame-pointer stack): a skip would be a branch that joins again, doubling the verifier's
/// paths through the rest (see `SampleHead::of`). The caller's lengths bound `words + bytes / 8`
/// within the body.
#[inline(always)]
unsafe fn put(body: *mut u64, words: usize, src: *const c_void, bytes: usize) {
    unsafe { bpf_probe_read_kernel(body.add(words).cast(), bytes as u32, src) };
}

/// Sends `ev` (false: not sent: the ring buffer was full, or a length was past its array).
#[inline(always)]
pub fn send(ev: &SampleEvent) -> bool {
    let Some(out) = SAMPLE_OUT.get_ptr_mut(stacks::scratch_slot_of(ev.kind)) else { return false };
    let out = unsafe { &mut *out };
    // The lengths are taken from the head in registers, bounded there: the verifier bounds
    // every copy below by them.
    let Some(head) = SampleHead::of(ev) else { return false };
    out.head = head;
    let at = head.layout();
    let body = out.body.as_mut_ptr();
    unsafe {
        put(body, 0, ev.kernel_stack.as_ptr().cast(), 8 * head.kernel_stack_len as usize);
        put(body, at.user_at, ev.user_stack.as_ptr().cast(), 8 * head.user_stack_len as usize);
        put(body, at.cfa_at, ev.user_cfa.as_ptr().cast(), 8 * at.cfa_len);
        put(body, at.py_at, ev.py_frames.as_ptr().cast(), PY_FRAME_BYTES * head.py_frames_len as usize);
        let record = core::slice::from_raw_parts(core::ptr::from_ref(out).cast::<u8>(), at.len);
        EVENTS.output::<[u8]>(record, BPF_RB_NO_WAKEUP as u64).is_ok()
    }
}
