//! A sample as it goes through the ring buffer: a [`SampleEvent`]'s fixed fields, then only the
//! filled part of each of its stacks, packed one after the other.
//!
//! The event is assembled in a per-CPU [`super::UnwindScratch`] with every array at its full
//! size (6.2 KB: 127 kernel and 127 user addresses, 127 CFAs, 128 Python frames), and copying it
//! whole cost every sample the same whatever its stacks held. A typical sample fills a few
//! hundred bytes of it (a frame-pointer user stack of ~10-30 addresses and as many Python
//! frames, no kernel stack, no CFAs), so the kernel packs the filled parts into a per-CPU
//! [`SampleRecord`] and sends [`record_len`] bytes of it; userspace finds each part from the
//! lengths in the head.
//!
//! Body order: kernel stack (`kernel_stack_len` addresses), user stack (`user_stack_len`
//! addresses), the user frames' CFAs (`user_stack_len` more, only when [`SampleHead::user_end`]
//! is not [`unwind::end::FRAME_POINTERS`]: the DWARF unwinder walked the stack), Python frames
//! (`py_frames_len` [`PyFrameRecord`]s).
use crate::{MAX_NATIVE_FRAMES, MAX_PY_FRAMES, OffCpuInfo, PyFrameRecord, SampleEvent, TASK_COMM_LEN, unwind};

/// The fixed part of a sent sample: [`SampleEvent`]'s fields in its order, except its arrays,
/// with `user_sp` and `user_end` brought forward.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleHead {
    /// [`super::EventKind`] as `u32`.
    pub kind: u32,
    pub cpu: u32,
    pub pid: u32,
    pub tid: u32,
    pub time_ns: u64,
    pub kernel_stack_len: u32,
    pub user_stack_len: u32,
    pub py_frames_len: u32,
    pub py_status: u32,
    pub comm: [u8; TASK_COMM_LEN],
    pub off: OffCpuInfo,
    pub user_sp: u64,
    pub user_end: u32,
    pub _pad: u32,
}

impl SampleHead {
    /// The head of `ev`; `None` if it holds more Python frames than its array (the body's parts
    /// are laid out from the lengths: one past its array would misplace the next part).
    ///
    /// The native stacks' lengths are masked rather than compared: they are at most
    /// `MAX_NATIVE_FRAMES` = 127 by construction (`bpf_get_stack` into 127 addresses, the
    /// unwinder stops at 127), so the mask changes none, and bounds them for the verifier
    /// without a branch. A branch that joins again doubles the paths the verifier walks
    /// through the rest of the send, in every program that sends: `sys_exit` reaches it in
    /// ~250 states, near the 1M-instruction limit.
    #[inline(always)]
    pub fn of(ev: &SampleEvent) -> Option<Self> {
        if ev.py_frames_len as usize > MAX_PY_FRAMES {
            return None;
        }
        Some(Self {
            kind: ev.kind,
            cpu: ev.cpu,
            pid: ev.pid,
            tid: ev.tid,
            time_ns: ev.time_ns,
            kernel_stack_len: ev.kernel_stack_len & NATIVE_LEN_MASK,
            user_stack_len: ev.user_stack_len & NATIVE_LEN_MASK,
            py_frames_len: ev.py_frames_len,
            py_status: ev.py_status,
            comm: ev.comm,
            off: ev.off,
            user_sp: ev.user_sp,
            user_end: ev.user_end,
            _pad: 0,
        })
    }

    /// Does the body carry a CFA per user frame?
    #[inline(always)]
    pub fn has_cfa(&self) -> bool {
        self.user_end != unwind::end::FRAME_POINTERS
    }

    /// Where each part of the body starts, in 8-byte words from the body's start, and the
    /// whole record's length in bytes. The head's lengths must be within their arrays' sizes
    /// (as [`SampleHead::of`] makes them; the decoder checks a received head first).
    #[inline(always)]
    pub fn layout(&self) -> Layout {
        let kernel = self.kernel_stack_len as usize;
        let user = self.user_stack_len as usize;
        let cfa = if self.has_cfa() { user } else { 0 };
        let py_at = kernel + user + cfa;
        Layout {
            user_at: kernel,
            cfa_at: kernel + user,
            cfa_len: cfa,
            py_at,
            len: HEAD_BYTES + 8 * py_at + PY_FRAME_BYTES * self.py_frames_len as usize,
        }
    }
}

/// See [`SampleHead::layout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub user_at: usize,
    pub cfa_at: usize,
    /// CFAs in the body: `user_stack_len`, or 0 for a frame-pointer stack.
    pub cfa_len: usize,
    pub py_at: usize,
    /// Bytes to send: the head and the filled parts.
    pub len: usize,
}

/// See [`SampleHead::of`].
pub const NATIVE_LEN_MASK: u32 = MAX_NATIVE_FRAMES as u32;

pub const HEAD_BYTES: usize = size_of::<SampleHead>();
pub const PY_FRAME_BYTES: usize = size_of::<PyFrameRecord>();
/// The body's room: every part at its largest.
pub const BODY_WORDS: usize = 3 * MAX_NATIVE_FRAMES + MAX_PY_FRAMES * PY_FRAME_BYTES / 8;

/// The per-CPU record a sample is packed in before it is sent (the kernel's `SAMPLE_OUT`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SampleRecord {
    pub head: SampleHead,
    pub body: [u64; BODY_WORDS],
}

const _: () = {
    use core::mem::offset_of;
    assert!(HEAD_BYTES == 96 + 16);
    // The head is SampleEvent's fixed fields, in its order, up to `off`.
    assert!(offset_of!(SampleHead, off) == offset_of!(SampleEvent, off));
    assert!(offset_of!(SampleHead, user_sp) == 96);
    assert!(PY_FRAME_BYTES.is_multiple_of(8));
    // The mask is every length up to MAX_NATIVE_FRAMES and nothing above.
    assert!((MAX_NATIVE_FRAMES + 1).is_power_of_two());
    // A full record is as large as a SampleEvent: packing never needs more room.
    assert!(size_of::<SampleRecord>() == size_of::<SampleEvent>());
};

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kernel: u32, user: u32, py: u32, user_end: u32) -> SampleEvent {
        SampleEvent {
            kind: 1,
            cpu: 0,
            pid: 1,
            tid: 1,
            time_ns: 0,
            kernel_stack_len: kernel,
            user_stack_len: user,
            py_frames_len: py,
            py_status: 0,
            comm: [0; TASK_COMM_LEN],
            off: OffCpuInfo::default(),
            kernel_stack: [0; MAX_NATIVE_FRAMES],
            user_stack: [0; MAX_NATIVE_FRAMES],
            py_frames: [PyFrameRecord::default(); MAX_PY_FRAMES],
            user_sp: 0,
            user_end,
            _pad: 0,
            user_cfa: [0; MAX_NATIVE_FRAMES],
        }
    }

    #[test]
    fn a_frame_pointer_sample_sends_its_user_stack_and_python_frames() {
        let head = SampleHead::of(&event(0, 12, 30, unwind::end::FRAME_POINTERS)).unwrap();
        let l = head.layout();
        assert_eq!((l.user_at, l.cfa_at, l.cfa_len, l.py_at), (0, 12, 0, 12));
        assert_eq!(l.len, 112 + 12 * 8 + 30 * 24);
    }

    #[test]
    fn a_dwarf_walked_sample_carries_a_cfa_per_user_frame() {
        let head = SampleHead::of(&event(5, 12, 2, unwind::end::CLEAN)).unwrap();
        let l = head.layout();
        assert_eq!((l.user_at, l.cfa_at, l.cfa_len, l.py_at), (5, 17, 12, 29));
        assert_eq!(l.len, 112 + 29 * 8 + 2 * 24);
    }

    #[test]
    fn a_full_record_fits_and_too_many_python_frames_are_refused() {
        let full = event(127, 127, MAX_PY_FRAMES as u32, unwind::end::TRUNCATED);
        assert_eq!(SampleHead::of(&full).unwrap().layout().len, size_of::<SampleRecord>());
        assert!(SampleHead::of(&event(0, 0, MAX_PY_FRAMES as u32 + 1, 0)).is_none());
    }
}
