//! Decoding of ring-buffer records into typed events.
//!
//! Records are read with `bytes::Buf` rather than by casting pointers: a record that is short or
//! of an unknown kind is rejected and counted, never trusted.
use std::mem::offset_of;

use bytes::Buf;
use profiler_common::{
    EventKind, ExecEvent, ForkEvent, MAX_NATIVE_FRAMES, MAX_PY_FRAMES, OffCpuInfo, PreemptEndEvent, PyFrameRecord,
    TASK_COMM_LEN, ThreadMissEvent,
    lifecycle::{TaskEvent, task_flags},
    sample_record::{HEAD_BYTES, Layout, SampleHead},
    wait_target::WaitTargetEvent,
};

use crate::offcpu::{classify::Classifier, kernel_target::KernelTarget};

/// An on-CPU sample, stacks leaf first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub cpu: u32,
    pub pid: u32,
    pub tid: u32,
    pub time_ns: u64,
    pub comm: [u8; TASK_COMM_LEN],
    pub kernel_stack: Vec<u64>,
    pub user_stack: Vec<u64>,
    /// `profiler_common::py_status` bits.
    pub py_status: u32,
    /// Python frames, innermost first.
    pub py_frames: Vec<PyFrameRecord>,
    /// Off-CPU events: what the thread was blocked in (zero for on-CPU samples).
    pub off: OffCpuInfo,
    /// The leaf's stack pointer, how the native walk ended (`profiler_common::unwind::end`),
    /// and each native frame's CFA (empty unless the DWARF unwinder walked the stack).
    pub user_sp: u64,
    pub user_end: u32,
    pub user_cfa: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    Sample(Sample),
    /// Process `pid` called exec.
    Exec {
        pid: u32,
    },
    /// Followed process `ppid` forked process `pid`; `flags` are `profiler_common::fork_flags`.
    Fork {
        pid: u32,
        ppid: u32,
        flags: u32,
    },
    /// A long blocking syscall, with the stacks it blocked in: checked, its parts left in the
    /// record.
    OffCpu(PackedSample<'a>),
    /// A thread preempted outside a syscall, with its stacks; `time_ns` is the switch-out.
    Preempted(Sample),
    /// The run-queue wait that followed the preemption at `since_ns`.
    PreemptEnd {
        pid: u32,
        tid: u32,
        since_ns: u64,
        runq_ns: u64,
    },
    /// What the descriptor of the `OffCpu` event that follows referred to.
    WaitTarget(KernelTarget),
    /// A record of what the first argument of thread `tid`'s call referred to, for a call
    /// whose first argument is no descriptor ([`Classifier::names_descriptor`]): never used to
    /// name a wait, so not decoded. A `time.sleep` loop sent one with every wait
    /// (`clock_nanosleep`'s clock id, 1, read as the descriptor of stdout): half of a
    /// `--all` daemon's records in scenario 1.
    UnusedWaitTarget {
        tid: u32,
    },
    /// The kernel could not find thread `tid`'s `PyThreadState` in its bounded scan: the one
    /// whose field at `key_offset` holds `key`.
    ThreadMiss {
        pid: u32,
        tid: u32,
        key_offset: u32,
        key: u64,
    },
    /// Thread `tid` of CPython process `pid` was created.
    ThreadStart {
        pid: u32,
        tid: u32,
    },
    /// Thread `tid` of a tracked process `pid` took the name `comm`.
    Renamed {
        pid: u32,
        tid: u32,
        comm: [u8; TASK_COMM_LEN],
    },
    /// Thread `tid` of process `pid` exited, named `comm` then; `process`: it was the last
    /// of its process (`guessed`: the kernel could only tell that it was the main thread).
    Exit {
        pid: u32,
        tid: u32,
        comm: [u8; TASK_COMM_LEN],
        process: bool,
        guessed: bool,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short {
        len: usize,
    },
    /// A sample whose stack length is past its array's size.
    BadLength {
        kind: u32,
    },
    UnknownKind(u32),
}

/// Decodes one ring-buffer record.
pub fn decode(mut buf: &[u8]) -> Result<Event<'_>, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Short { len: buf.len() });
    }
    let kind = u32::from_ne_bytes(buf[..4].try_into().unwrap());
    match EventKind::from_u32(kind) {
        Some(EventKind::WaitTarget) => {
            if buf.len() < size_of::<WaitTargetEvent>() {
                return Err(DecodeError::Short { len: buf.len() });
            }
            let tid = u32::from_ne_bytes(buf[offset_of!(WaitTargetEvent, tid)..][..4].try_into().unwrap());
            let syscall_nr =
                i64::from_ne_bytes(buf[offset_of!(WaitTargetEvent, syscall_nr)..][..8].try_into().unwrap());
            if !Classifier::names_descriptor(syscall_nr) {
                return Ok(Event::UnusedWaitTarget { tid });
            }
            KernelTarget::decode(buf).map(Event::WaitTarget).ok_or(DecodeError::Short { len: buf.len() })
        }
        Some(kind @ (EventKind::OnCpuSample | EventKind::Preempted)) => {
            let sample = PackedSample::parse(kind, buf)?.sample();
            Ok(if kind == EventKind::Preempted { Event::Preempted(sample) } else { Event::Sample(sample) })
        }
        // Checked, not copied out: most are repeats (see engine::repeats).
        Some(EventKind::OffCpu) => PackedSample::parse(EventKind::OffCpu, buf).map(Event::OffCpu),
        Some(EventKind::Exec) => {
            if buf.len() < size_of::<ExecEvent>() {
                return Err(DecodeError::Short { len: buf.len() });
            }
            buf.advance(4);
            Ok(Event::Exec { pid: buf.get_u32_ne() })
        }
        Some(EventKind::Fork) => {
            if buf.len() < size_of::<ForkEvent>() {
                return Err(DecodeError::Short { len: buf.len() });
            }
            buf.advance(4);
            let (pid, ppid, flags) = (buf.get_u32_ne(), buf.get_u32_ne(), buf.get_u32_ne());
            Ok(Event::Fork { pid, ppid, flags })
        }
        Some(EventKind::ThreadMiss) => {
            if buf.len() < size_of::<ThreadMissEvent>() {
                return Err(DecodeError::Short { len: buf.len() });
            }
            buf.advance(4);
            let (pid, tid, key_offset) = (buf.get_u32_ne(), buf.get_u32_ne(), buf.get_u32_ne());
            Ok(Event::ThreadMiss { pid, tid, key_offset, key: buf.get_u64_ne() })
        }
        Some(EventKind::PreemptEnd) => {
            if buf.len() < size_of::<PreemptEndEvent>() {
                return Err(DecodeError::Short { len: buf.len() });
            }
            buf.advance(4);
            let (pid, tid) = (buf.get_u32_ne(), buf.get_u32_ne());
            buf.advance(4);
            Ok(Event::PreemptEnd { pid, tid, since_ns: buf.get_u64_ne(), runq_ns: buf.get_u64_ne() })
        }
        Some(kind @ (EventKind::ThreadStart | EventKind::Rename | EventKind::Exit)) => {
            if buf.len() < size_of::<TaskEvent>() {
                return Err(DecodeError::Short { len: buf.len() });
            }
            buf.advance(4);
            let (pid, tid, flags) = (buf.get_u32_ne(), buf.get_u32_ne(), buf.get_u32_ne());
            let mut comm = [0u8; TASK_COMM_LEN];
            buf.copy_to_slice(&mut comm);
            Ok(match kind {
                EventKind::ThreadStart => Event::ThreadStart { pid, tid },
                EventKind::Rename => Event::Renamed { pid, tid, comm },
                _ => Event::Exit {
                    pid,
                    tid,
                    comm,
                    process: flags & task_flags::GROUP_DEAD != 0,
                    guessed: flags & task_flags::GROUP_GUESSED != 0,
                },
            })
        }
        None => Err(DecodeError::UnknownKind(kind)),
    }
}

/// A sample record whose head was read and whose lengths were checked: each part lies where
/// the head's layout puts it, inside the record. [`PackedSample::sample`] copies the parts out;
/// [`super::repeats`] reads an off-CPU event's identity from [`PackedSample::bytes`] instead,
/// without copying anything out of a repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedSample<'a> {
    pub head: SampleHead,
    pub layout: Layout,
    /// The record up to the end of its last part (a longer record's tail is not read).
    pub bytes: &'a [u8],
}

impl<'a> PackedSample<'a> {
    /// Reads the head of a record of a sample `kind` and checks what it places: every length
    /// within its array (a part placed past its array cannot be laid out), and the record long
    /// enough for the parts they place. The only check of a sample record: every path that
    /// reads one goes through it.
    fn parse(kind: EventKind, record: &'a [u8]) -> Result<Self, DecodeError> {
        let len = record.len();
        if len < HEAD_BYTES {
            return Err(DecodeError::Short { len });
        }
        let mut buf = &record[4..];
        let mut head = SampleHead { kind: kind as u32, ..SampleHead::default() };
        head.cpu = buf.get_u32_ne();
        head.pid = buf.get_u32_ne();
        head.tid = buf.get_u32_ne();
        head.time_ns = buf.get_u64_ne();
        head.kernel_stack_len = buf.get_u32_ne();
        head.user_stack_len = buf.get_u32_ne();
        head.py_frames_len = buf.get_u32_ne();
        head.py_status = buf.get_u32_ne();
        buf.copy_to_slice(&mut head.comm);
        head.off = OffCpuInfo {
            blocked_ns: buf.get_u64_ne(),
            runq_ns: buf.get_u64_ne(),
            syscall_nr: buf.get_i64_ne(),
            arg0: buf.get_u64_ne(),
            state: buf.get_u32_ne(),
            switches: buf.get_u32_ne(),
        };
        head.user_sp = buf.get_u64_ne();
        head.user_end = buf.get_u32_ne();
        if head.kernel_stack_len as usize > MAX_NATIVE_FRAMES
            || head.user_stack_len as usize > MAX_NATIVE_FRAMES
            || head.py_frames_len as usize > MAX_PY_FRAMES
        {
            return Err(DecodeError::BadLength { kind: kind as u32 });
        }
        let layout = head.layout();
        if len < layout.len {
            return Err(DecodeError::Short { len });
        }
        Ok(PackedSample { head, layout, bytes: &record[..layout.len] })
    }

    /// The sample, its parts copied out of the record.
    pub fn sample(&self) -> Sample {
        let head = &self.head;
        let mut body = &self.bytes[HEAD_BYTES..];
        let user_len = head.user_stack_len as usize;
        let kernel_stack = read_words(&mut body, head.kernel_stack_len as usize);
        let user_stack = read_words(&mut body, user_len);
        let user_cfa = read_words(&mut body, self.layout.cfa_len);
        let py_frames = (0..head.py_frames_len)
            .map(|_| PyFrameRecord {
                code: body.get_u64_ne(),
                instr: body.get_u64_ne(),
                fingerprint: body.get_u32_ne(),
                owner: body.get_u32_ne(),
            })
            .collect();
        Sample {
            cpu: head.cpu,
            pid: head.pid,
            tid: head.tid,
            time_ns: head.time_ns,
            comm: head.comm,
            kernel_stack,
            user_stack,
            py_status: head.py_status,
            py_frames,
            off: head.off,
            user_sp: head.user_sp,
            user_end: head.user_end,
            user_cfa,
        }
    }
}

/// Reads `len` 8-byte words (the caller checked that they are there).
fn read_words(buf: &mut &[u8], len: usize) -> Vec<u64> {
    (0..len).map(|_| buf.get_u64_ne()).collect()
}

/// A thread name from a NUL-padded `comm`.
/// Borrowed when the name is valid UTF-8 (almost always): no allocation per event.
pub fn comm_cow(comm: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end])
}

/// A sample packed as the kernel's `sample_out::send` packs it: the head from the full
/// event, then each part at the place the layout gives it.
#[cfg(test)]
pub(super) fn pack(ev: &profiler_common::SampleEvent) -> Vec<u8> {
    let head = SampleHead::of(ev).unwrap();
    let at = head.layout();
    let mut rec =
        profiler_common::sample_record::SampleRecord { head, body: [0; profiler_common::sample_record::BODY_WORDS] };
    let (k, u, p) = (head.kernel_stack_len as usize, head.user_stack_len as usize, head.py_frames_len as usize);
    rec.body[..k].copy_from_slice(&ev.kernel_stack[..k]);
    rec.body[at.user_at..at.user_at + u].copy_from_slice(&ev.user_stack[..u]);
    rec.body[at.cfa_at..at.cfa_at + at.cfa_len].copy_from_slice(&ev.user_cfa[..at.cfa_len]);
    for (i, f) in ev.py_frames[..p].iter().enumerate() {
        let w = at.py_at + 3 * i;
        rec.body[w] = f.code;
        rec.body[w + 1] = f.instr;
        rec.body[w + 2] = f.fingerprint as u64 | (f.owner as u64) << 32;
    }
    // SAFETY: SampleRecord is repr(C) plain integers without padding.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(&rec).cast::<u8>(),
            size_of::<profiler_common::sample_record::SampleRecord>(),
        )
    };
    bytes[..at.len].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    use profiler_common::{SampleEvent, unwind};

    fn event(kernel: &[u64], user: &[u64], user_end: u32) -> SampleEvent {
        let mut ev = SampleEvent {
            kind: EventKind::OnCpuSample as u32,
            cpu: 1,
            pid: 100,
            tid: 101,
            time_ns: 123_456,
            kernel_stack_len: kernel.len() as u32,
            user_stack_len: user.len() as u32,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            off: OffCpuInfo::default(),
            py_frames_len: 1,
            py_status: 3,
            kernel_stack: [0; MAX_NATIVE_FRAMES],
            user_stack: [0; MAX_NATIVE_FRAMES],
            py_frames: [PyFrameRecord::default(); MAX_PY_FRAMES],
            user_sp: 0x7ff0,
            user_end,
            _pad: 0,
            user_cfa: [0; MAX_NATIVE_FRAMES],
        };
        ev.user_cfa[..user.len()].copy_from_slice(&user.iter().map(|a| a + 1).collect::<Vec<_>>());
        ev.py_frames[0] = PyFrameRecord { code: 0xc0de, instr: 0x1a57, fingerprint: 42, owner: 1 };
        ev.kernel_stack[..kernel.len()].copy_from_slice(kernel);
        ev.user_stack[..user.len()].copy_from_slice(user);
        ev
    }

    fn raw_sample(kernel: &[u64], user: &[u64]) -> Vec<u8> {
        pack(&event(kernel, user, unwind::end::CLEAN))
    }

    #[test]
    fn decodes_a_sample_as_laid_out_by_the_kernel() {
        let raw = raw_sample(&[0xffff_ffff_8100_0000], &[0x401000, 0x401100, 0x401200]);
        let Ok(Event::Sample(s)) = decode(&raw) else { panic!("not a sample") };
        assert_eq!((s.cpu, s.pid, s.tid, s.time_ns), (1, 100, 101, 123_456));
        assert_eq!(comm_cow(&s.comm), "worker");
        assert_eq!(s.kernel_stack, vec![0xffff_ffff_8100_0000]);
        assert_eq!(s.user_stack, vec![0x401000, 0x401100, 0x401200]);
        assert_eq!(s.py_status, 3);
        assert_eq!(s.py_frames, vec![PyFrameRecord { code: 0xc0de, instr: 0x1a57, fingerprint: 42, owner: 1 }]);
        assert_eq!((s.user_sp, s.user_end), (0x7ff0, unwind::end::CLEAN));
        assert_eq!(s.user_cfa, vec![0x401001, 0x401101, 0x401201]);
    }

    #[test]
    fn decodes_exec() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(EventKind::Exec as u32).to_ne_bytes());
        raw.extend_from_slice(&4321u32.to_ne_bytes());
        assert_eq!(decode(&raw), Ok(Event::Exec { pid: 4321 }));
        assert_eq!(decode(&raw[..6]), Err(DecodeError::Short { len: 6 }));
    }

    #[test]
    fn decodes_fork() {
        let mut raw = Vec::new();
        for word in [EventKind::Fork as u32, 4322, 4321, 3] {
            raw.extend_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(raw.len(), size_of::<ForkEvent>());
        assert_eq!(decode(&raw), Ok(Event::Fork { pid: 4322, ppid: 4321, flags: 3 }));
        assert_eq!(decode(&raw[..12]), Err(DecodeError::Short { len: 12 }));
    }

    #[test]
    fn decodes_thread_start_rename_and_exit() {
        let raw = |kind: EventKind, flags: u32| {
            let mut raw = Vec::new();
            for word in [kind as u32, 4321, 4330, flags] {
                raw.extend_from_slice(&word.to_ne_bytes());
            }
            raw.extend_from_slice(b"worker-2\0\0\0\0\0\0\0\0");
            assert_eq!(raw.len(), size_of::<TaskEvent>());
            raw
        };
        assert_eq!(decode(&raw(EventKind::ThreadStart, 0)), Ok(Event::ThreadStart { pid: 4321, tid: 4330 }));
        let Ok(Event::Renamed { pid: 4321, tid: 4330, comm }) = decode(&raw(EventKind::Rename, 0)) else {
            panic!("not a rename")
        };
        assert_eq!(comm_cow(&comm), "worker-2");
        let Ok(Event::Exit { pid: 4321, tid: 4330, process: true, guessed: false, .. }) =
            decode(&raw(EventKind::Exit, task_flags::GROUP_DEAD))
        else {
            panic!("not a process exit")
        };
        let Ok(Event::Exit { process: false, .. }) = decode(&raw(EventKind::Exit, 0)) else { panic!("not an exit") };
        assert_eq!(decode(&raw(EventKind::Exit, 0)[..20]), Err(DecodeError::Short { len: 20 }));
    }

    #[test]
    fn a_wait_target_of_a_call_without_a_descriptor_is_not_decoded() {
        let target = |syscall_nr: i64| {
            let mut raw = vec![0u8; size_of::<WaitTargetEvent>()];
            raw[..4].copy_from_slice(&(EventKind::WaitTarget as u32).to_ne_bytes());
            raw[8..12].copy_from_slice(&4330u32.to_ne_bytes());
            raw[16..24].copy_from_slice(&syscall_nr.to_ne_bytes());
            raw[24..32].copy_from_slice(&1u64.to_ne_bytes());
            raw
        };
        let sleep = target(libc::SYS_clock_nanosleep);
        assert_eq!(decode(&sleep), Ok(Event::UnusedWaitTarget { tid: 4330 }));
        let Ok(Event::WaitTarget(t)) = decode(&target(libc::SYS_read)) else { panic!("not decoded") };
        assert_eq!((t.tid, t.syscall_nr, t.arg0), (4330, libc::SYS_read, 1));
        // Checked first, as a decoded one is.
        assert_eq!(decode(&sleep[..40]), Err(DecodeError::Short { len: 40 }));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let raw = raw_sample(&[], &[1]);
        assert_eq!(decode(&raw[..100]), Err(DecodeError::Short { len: 100 }));
        assert_eq!(decode(&[1, 2]), Err(DecodeError::Short { len: 2 }));
        let mut bad = raw.clone();
        bad[..4].copy_from_slice(&77u32.to_ne_bytes());
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(77)));
    }

    #[test]
    fn sends_only_the_filled_parts() {
        let raw = raw_sample(&[0xffff_ffff_8100_0000], &[0x401000, 0x401100, 0x401200]);
        assert_eq!(raw.len(), HEAD_BYTES + (1 + 3 + 3) * 8 + size_of::<PyFrameRecord>());
        // A frame-pointer stack has no CFAs: they take no room.
        let ev = event(&[], &[0x401000, 0x401100], unwind::end::FRAME_POINTERS);
        let raw = pack(&ev);
        assert_eq!(raw.len(), HEAD_BYTES + 2 * 8 + size_of::<PyFrameRecord>());
        let Ok(Event::Sample(s)) = decode(&raw) else { panic!("not a sample") };
        assert_eq!(s.user_stack, vec![0x401000, 0x401100]);
        assert!(s.user_cfa.is_empty() && s.kernel_stack.is_empty());
        assert_eq!(s.py_frames, vec![PyFrameRecord { code: 0xc0de, instr: 0x1a57, fingerprint: 42, owner: 1 }]);
    }

    #[test]
    fn rejects_a_record_shorter_than_its_lengths_say() {
        let raw = raw_sample(&[], &[1, 2, 3]);
        for cut in [HEAD_BYTES, raw.len() - 8, raw.len() - 1] {
            assert_eq!(decode(&raw[..cut]), Err(DecodeError::Short { len: cut }));
        }
        assert!(matches!(decode(&raw), Ok(Event::Sample(_))));
    }

    #[test]
    fn rejects_lengths_past_the_arrays() {
        for field in [24, 28, 32] {
            let mut raw = raw_sample(&[], &[]);
            raw.resize(size_of::<SampleEvent>() * 2, 0);
            raw[field..field + 4].copy_from_slice(&9999u32.to_ne_bytes());
            assert_eq!(decode(&raw), Err(DecodeError::BadLength { kind: EventKind::OnCpuSample as u32 }));
        }
    }
}
