//! Accumulates decoded samples while profiling, keeping raw addresses; turns them into a
//! symbolized [`Profile`] at the end.
use std::collections::HashMap;

use crate::{
    events::{Sample, comm_str},
    procinfo,
    profile::{ProcessProfile, StackProfile, ThreadProfile},
    symbols::Symbols,
};

#[derive(Hash, PartialEq, Eq)]
struct RawStack {
    pid: u32,
    tid: u32,
    /// Leaf first, as sampled.
    user: Box<[u64]>,
    kernel: Box<[u64]>,
}

struct ProcessInfo {
    comm: String,
    cmdline: Option<String>,
}

#[derive(Default)]
pub struct Aggregator {
    stacks: HashMap<RawStack, u64>,
    /// (pid, tid) → (latest thread name, samples).
    threads: HashMap<(u32, u32), (String, u64)>,
    processes: HashMap<u32, ProcessInfo>,
    pub samples: u64,
}

impl Aggregator {
    pub fn add(&mut self, s: Sample, symbols: &mut Symbols) {
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
        symbols.note_user_stack(s.pid, &s.user_stack);
        symbols.note_kernel_stack(&s.kernel_stack);
        let key = RawStack {
            pid: s.pid,
            tid: s.tid,
            user: s.user_stack.into_boxed_slice(),
            kernel: s.kernel_stack.into_boxed_slice(),
        };
        *self.stacks.entry(key).or_insert(0) += 1;
    }

    /// Builds the symbolized per-process profile. Stacks are root first: the user stack from
    /// its outermost frame to the sampled one, then kernel frames on top of it.
    pub fn build(&self, symbols: &Symbols) -> Vec<ProcessProfile> {
        let mut by_pid: HashMap<u32, HashMap<(u32, Vec<String>), u64>> = HashMap::new();
        for (raw, &count) in &self.stacks {
            let mut frames = Vec::with_capacity(raw.user.len() + raw.kernel.len());
            for (i, &addr) in raw.user.iter().enumerate().rev() {
                frames.push(symbols.user_frame(raw.pid, addr, i).to_string());
            }
            for (i, &addr) in raw.kernel.iter().enumerate().rev() {
                frames.push(symbols.kernel_frame(addr, i).to_string());
            }
            *by_pid.entry(raw.pid).or_default().entry((raw.tid, frames)).or_insert(0) += count;
        }

        let mut processes: Vec<ProcessProfile> = by_pid
            .into_iter()
            .map(|(pid, stacks)| {
                let info = &self.processes[&pid];
                let mut threads: Vec<ThreadProfile> = self
                    .threads
                    .iter()
                    .filter(|((p, _), _)| *p == pid)
                    .map(|(&(_, tid), (name, samples))| ThreadProfile { tid, name: name.clone(), samples: *samples })
                    .collect();
                threads.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.tid.cmp(&b.tid)));
                let thread_name = |tid: u32| {
                    threads.iter().find(|t| t.tid == tid).map(|t| t.name.clone()).unwrap_or_default()
                };
                let mut stacks: Vec<StackProfile> = stacks
                    .into_iter()
                    .map(|((tid, frames), samples)| StackProfile { tid, thread: thread_name(tid), frames, samples })
                    .collect();
                stacks.sort_by(|a, b| b.samples.cmp(&a.samples).then_with(|| (a.tid, &a.frames).cmp(&(b.tid, &b.frames))));
                ProcessProfile {
                    pid,
                    comm: info.comm.clone(),
                    cmdline: info.cmdline.clone(),
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
