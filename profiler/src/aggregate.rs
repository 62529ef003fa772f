//! Accumulates decoded samples while profiling; turns them into a symbolized [`Profile`] at
//! the end. Native addresses are kept raw and symbolized in batches; Python frames are named
//! as they arrive (their code objects are read while the process is surely alive).
use std::collections::HashMap;

use profiler_common::py_status;

use crate::{
    events::{Sample, comm_str},
    procinfo,
    profile::{ProcessProfile, PythonFrameProfile, StackProfile, ThreadProfile},
    python::{PyFrame, PythonRegistry, Resolved},
    symbols::Symbols,
};

/// Shown as the root of a Python stack deeper than the walk bound.
pub const TRUNCATED: &str = "[truncated]";
/// A Python frame whose code object could not be read.
pub const UNKNOWN_PY: &str = "[unknown python frame]";

/// Interned frame texts (many samples share frames).
#[derive(Default)]
struct Frames {
    text: Vec<String>,
    python: Vec<Option<PyFrame>>,
    index: HashMap<String, u32>,
}

impl Frames {
    fn intern(&mut self, text: String, python: Option<PyFrame>) -> u32 {
        if let Some(&id) = self.index.get(&text) {
            return id;
        }
        let id = self.text.len() as u32;
        self.index.insert(text.clone(), id);
        self.text.push(text);
        self.python.push(python);
        id
    }
}

#[derive(Hash, PartialEq, Eq)]
struct RawStack {
    pid: u32,
    tid: u32,
    /// Interned Python frames, root first (empty for native-only stacks).
    python: Box<[u32]>,
    /// Native user addresses, leaf first. With Python frames, at most the native leaf.
    user: Box<[u64]>,
    kernel: Box<[u64]>,
}

struct ProcessInfo {
    comm: String,
    cmdline: Option<String>,
}

/// Key of a resolved Python frame: (pid, code, fingerprint, instruction, owner).
type PyFrameKey = (u32, u64, u32, u64, u32);

#[derive(Default)]
pub struct Aggregator {
    stacks: HashMap<RawStack, u64>,
    /// (pid, tid) → (latest thread name, samples).
    threads: HashMap<(u32, u32), (String, u64)>,
    processes: HashMap<u32, ProcessInfo>,
    frames: Frames,
    /// Resolved Python frames: None for frames not shown.
    py_frames: HashMap<PyFrameKey, Option<u32>>,
    pub samples: u64,
    /// Samples of Python processes, and how many of them carried Python frames.
    pub python_samples: u64,
    pub python_samples_with_frames: u64,
    pub off_cpu_events: u64,
}

impl Aggregator {
    pub fn add(&mut self, s: Sample, symbols: &mut Symbols, python: &mut PythonRegistry) {
        self.samples += 1;
        let thread_name = comm_str(&s.comm);
        self.processes.entry(s.pid).or_insert_with(|| {
            // Read eagerly: the process may be gone by the time the profile is written.
            ProcessInfo {
                comm: procinfo::comm(s.pid).unwrap_or_else(|| thread_name.clone()),
                cmdline: procinfo::cmdline(s.pid),
            }
        });
        let t = self.threads.entry((s.pid, s.tid)).or_insert_with(|| (String::new(), 0));
        t.0 = thread_name;
        t.1 += 1;

        python.observe(s.pid);
        let python_ids = self.python_frames(&s, python);
        let mut user = s.user_stack;
        if let Some(proc) = python.get_mut(s.pid) {
            self.python_samples += 1;
            if !python_ids.is_empty() {
                self.python_samples_with_frames += 1;
                // Python frames replace the native stack, which cannot be unwound through the
                // interpreter (no frame pointers); the native leaf stays when it is outside the
                // interpreter (a C extension, libc, a syscall wrapper).
                user.truncate(1);
                if user.first().is_some_and(|&leaf| proc.in_interpreter(leaf)) {
                    user.clear();
                }
            }
        }
        symbols.note_user_stack(s.pid, &user);
        symbols.note_kernel_stack(&s.kernel_stack);
        let key = RawStack {
            pid: s.pid,
            tid: s.tid,
            python: python_ids.into_boxed_slice(),
            user: user.into_boxed_slice(),
            kernel: s.kernel_stack.into_boxed_slice(),
        };
        *self.stacks.entry(key).or_insert(0) += 1;
    }

    pub fn add_off_cpu(&mut self, s: Sample, _symbols: &mut Symbols, _python: &mut PythonRegistry) {
        log::debug!("off-cpu: pid {} tid {} {:?}", s.pid, s.tid, s.off);
        self.off_cpu_events += 1;
    }

    /// Process `pid` called exec: read its name and command line again; frames resolved for
    /// its old program no longer apply.
    pub fn exec(&mut self, pid: u32) {
        if let Some(info) = self.processes.get_mut(&pid) {
            info.comm = procinfo::comm(pid).unwrap_or_else(|| info.comm.clone());
            info.cmdline = procinfo::cmdline(pid).or_else(|| info.cmdline.take());
        }
        self.py_frames.retain(|(p, ..), _| *p != pid);
    }

    /// The sample's Python frames, interned, root first.
    fn python_frames(&mut self, s: &Sample, python: &mut PythonRegistry) -> Vec<u32> {
        if s.py_frames.is_empty() {
            return Vec::new();
        }
        let Some(proc) = python.get_mut(s.pid) else { return Vec::new() };
        let mut ids = Vec::with_capacity(s.py_frames.len() + 1);
        if s.py_status & py_status::TRUNCATED != 0 {
            ids.push(self.frames.intern(TRUNCATED.to_string(), None));
        }
        for rec in s.py_frames.iter().rev() {
            let key = (s.pid, rec.code, rec.fingerprint, rec.instr, rec.owner);
            let id = match self.py_frames.get(&key) {
                Some(id) => *id,
                None => {
                    let id = match proc.resolve(rec) {
                        Resolved::Frame(f) => Some(self.frames.intern(f.to_string(), Some(f))),
                        Resolved::Unknown => Some(self.frames.intern(UNKNOWN_PY.to_string(), None)),
                        Resolved::Hidden => None,
                    };
                    self.py_frames.insert(key, id);
                    id
                }
            };
            ids.extend(id);
        }
        ids
    }

    /// Builds the symbolized per-process profile. Stacks are root first: Python frames (or the
    /// native user stack from its outermost frame), then the native leaf, then kernel frames.
    pub fn build(&self, symbols: &Symbols, python: &PythonRegistry) -> Vec<ProcessProfile> {
        type StackKey = (u32, Vec<String>, Vec<u32>);
        let mut by_pid: HashMap<u32, HashMap<StackKey, u64>> = HashMap::new();
        for (raw, &count) in &self.stacks {
            let mut frames = Vec::with_capacity(raw.python.len() + raw.user.len() + raw.kernel.len());
            frames.extend(raw.python.iter().map(|&id| self.frames.text[id as usize].clone()));
            for (i, &addr) in raw.user.iter().enumerate().rev() {
                frames.push(symbols.user_frame(raw.pid, addr, i).to_string());
            }
            for (i, &addr) in raw.kernel.iter().enumerate().rev() {
                frames.push(symbols.kernel_frame(addr, i).to_string());
            }
            let py: Vec<u32> = raw.python.iter().copied().filter(|&id| self.frames.python[id as usize].is_some()).collect();
            *by_pid.entry(raw.pid).or_default().entry((raw.tid, frames, py)).or_insert(0) += count;
        }

        let mut processes: Vec<ProcessProfile> = by_pid
            .into_iter()
            .map(|(pid, stacks)| {
                let info = &self.processes[&pid];
                let mut threads: Vec<ThreadProfile> = self
                    .threads
                    .iter()
                    .filter(|((p, _), _)| *p == pid)
                    .map(|(&(_, tid), (name, samples))| ThreadProfile {
                        tid,
                        name: name.clone(),
                        python_name: python.thread_name(pid, tid).map(str::to_string),
                        samples: *samples,
                    })
                    .collect();
                threads.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.tid.cmp(&b.tid)));
                let thread_name = |tid: u32| {
                    threads
                        .iter()
                        .find(|t| t.tid == tid)
                        .map(|t| t.python_name.clone().unwrap_or_else(|| t.name.clone()))
                        .unwrap_or_default()
                };
                let mut stacks: Vec<StackProfile> = stacks
                    .into_iter()
                    .map(|((tid, frames, py), samples)| StackProfile {
                        tid,
                        thread: thread_name(tid),
                        frames,
                        python_frames: py
                            .iter()
                            .filter_map(|&id| self.frames.python[id as usize].as_ref())
                            .map(|f| PythonFrameProfile { function: f.function.clone(), file: f.file.clone(), line: f.line })
                            .collect(),
                        samples,
                    })
                    .collect();
                stacks.sort_by(|a, b| b.samples.cmp(&a.samples).then_with(|| (a.tid, &a.frames).cmp(&(b.tid, &b.frames))));
                ProcessProfile {
                    pid,
                    comm: info.comm.clone(),
                    cmdline: info.cmdline.clone(),
                    python_version: python.version(pid).map(|v| v.to_string()),
                    samples: threads.iter().map(|t| t.samples).sum(),
                    threads,
                    stacks,
                }
            })
            .collect();
        processes.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.pid.cmp(&b.pid)));
        processes
    }
}
