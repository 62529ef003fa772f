//! `pyebpf dump`: every thread of each Python process (or of the given processes) as it is
//! now, without pausing anything: the task iterator gives each thread's kernel stack, fs base
//! and (5.15+) the syscall it is in; /proc the thread list, states, names and how long each
//! has been off the CPU; process memory the Python stacks (the kernel unwinder's walk, from
//! userspace) and who holds the GIL. Waits are classified as in profiles.
use std::collections::HashMap;

use profiler_common::{
    off_state,
    task_iter::{TASK_HAS_ON_CPU, TASK_HAS_QUEUED, TASK_HAS_REGS, TaskRecord},
};

use super::dump_native::{NativeDump, PyFrame};
use crate::{
    bpf::{Bpf, BpfConfig, recorded_arg0},
    host::{clock, memory::Memory, procinfo, symbols::Symbols},
    model::{
        Category,
        dump::{DumpFrame, DumpProcess, DumpThread},
    },
    offcpu::{classify::Classifier, syscalls},
    python::{PythonRegistry, Resolved},
};

/// Which processes: these pids (any process, Python or not), or every Python process.
pub enum DumpTarget {
    Pids(Vec<u32>),
    AllPython,
}

/// A thread's scheduling state from /proc/PID/task/TID/stat, named.
fn state_name(c: char) -> &'static str {
    match c {
        'R' => "running",
        'S' => "sleeping",
        'D' => "disk-sleep",
        'T' => "stopped",
        't' => "traced",
        'Z' => "zombie",
        'I' => "idle",
        _ => "unknown",
    }
}

/// One thread's /proc view: state letter, syscall (number, args, sp) when blocked in one.
struct ProcThread {
    tid: u32,
    state: char,
    syscall: Option<(i64, [u64; 6], u64)>,
}

fn proc_threads(pid: u32) -> Vec<ProcThread> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out: Vec<ProcThread> = tasks
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next())?.chars().next()?;
            let syscall = if state == 'S' || state == 'D' { procinfo::thread_syscall(pid, tid) } else { None };
            Some(ProcThread { tid, state, syscall })
        })
        .collect();
    out.sort_by_key(|t| t.tid);
    out
}

/// Where a thread in state R is, from its task iterator record: on a CPU or waiting for one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CpuState {
    Running {
        cpu: u32,
    },
    /// Waiting on `cpu`'s run queue for `queued_s` so far (when the kernel keeps it);
    /// `in_syscall`: it is inside one (woken in it, or preempted there), as far as known.
    Runnable {
        cpu: u32,
        queued_s: Option<f64>,
        in_syscall: Option<bool>,
    },
}

/// Running or runnable, for a thread /proc shows in state R, from the iterator's record of it
/// (None without one, or without `on_cpu` in this kernel, or when the record saw it asleep:
/// /proc is read after the iterator, so the thread woke in between).
fn cpu_state(r: &TaskRecord) -> Option<CpuState> {
    if r.flags & TASK_HAS_ON_CPU == 0 || r.state != 0 {
        return None;
    }
    if r.on_cpu != 0 {
        return Some(CpuState::Running { cpu: r.cpu });
    }
    // `last_queued` and the run queue's clock are one clock; a wait that moved to another
    // CPU's queue compares two CPUs' clocks, which may disagree by a little: never below 0.
    let queued_s = (r.flags & TASK_HAS_QUEUED != 0 && r.last_queued != 0 && r.rq_clock != 0)
        .then(|| r.rq_clock.saturating_sub(r.last_queued) as f64 / 1e9);
    let in_syscall = (r.flags & TASK_HAS_REGS != 0).then_some(r.syscall_nr >= 0);
    Some(CpuState::Runnable { cpu: r.cpu, queued_s, in_syscall })
}

/// Seconds since the thread last ran: its `se.exec_start` (in /proc/PID/task/TID/sched, the
/// task clock of the CPU it last ran on, where a sleeping thread stays) against that CPU's task
/// clock now. CLOCK_MONOTONIC is not that clock: it counts the CPU's interrupt and steal time,
/// and a 1.5 s sleep dumped as 25.8 s on the build VM.
fn off_cpu_for(pid: u32, tid: u32, clocks: &mut HashMap<u32, Option<f64>>) -> Option<f64> {
    let sched = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/sched")).ok()?;
    let exec_start = clock::exec_start_ms(&sched)?;
    let cpu = procinfo::thread_cpu(pid, tid)?;
    let now = (*clocks.entry(cpu).or_insert_with(|| clock::task_clock_ms(cpu)))?;
    Some(((now - exec_start) / 1e3).max(0.0))
}

/// The dump of every target process, in pid order. `bpf` is None when the kernel refused
/// the programs: threads then come without kernel stacks, and 3.8–3.10 threads without
/// Python stacks (their thread states are found by fs base, which only the kernel knows).
/// `native`: each thread's native stack too, merged with its Python frames (`dump_native`).
pub fn dump(target: &DumpTarget, kernel_frames: bool, native: bool) -> Vec<DumpProcess> {
    let mut python = PythonRegistry::default();
    let pids: Vec<u32> = match target {
        DumpTarget::Pids(pids) => pids.clone(),
        DumpTarget::AllPython => procinfo::all_stats().into_iter().filter(|s| !s.zombie).map(|s| s.pid).collect(),
    };
    let own = std::process::id();
    let mut pids: Vec<u32> = pids.into_iter().filter(|&p| p != own).collect();
    for &pid in &pids {
        python.observe(pid);
    }
    if matches!(target, DumpTarget::AllPython) {
        pids.retain(|&pid| python.get_mut(pid).is_some());
    }
    let mut bpf = Bpf::load(&BpfConfig {
        target_all: false,
        kernel_stacks: false,
        frequency: 1,
        bpf_stats: false,
        py_max_depth: profiler_common::MAX_PY_FRAMES as u32,
        off_cpu: false,
        off_cpu_threshold_ns: 0,
        off_cpu_stack_rate: 0,
        native_rows: None,
        follow_children: false,
    })
    .map_err(|e| log::warn!("no task iterator ({e:#}): threads come without kernel stacks"))
    .ok();
    let mut classifier = Classifier::default();
    for (pid, range) in python.take_gil_ranges() {
        classifier.set_gil(pid, range);
    }
    for (pid, info) in python.take_pending() {
        if python.version(pid).is_some_and(|v| (v.major, v.minor) >= (3, 13)) {
            classifier.set_parking_lot(pid);
        }
        if let Some(bpf) = &mut bpf {
            let _ = bpf.set_python(pid, &info);
        }
    }
    let mut native_dump = native.then(|| NativeDump::prepare(&pids));
    if let Some(bpf) = &mut bpf {
        for &pid in &pids {
            let _ = bpf.add_target(pid);
        }
    }
    // Switch counts just before the registers are read, stacks walked just after.
    if let Some(d) = &mut native_dump {
        d.note_switches();
    }
    let tasks: HashMap<u32, TaskRecord> = match &mut bpf {
        Some(bpf) => bpf.tasks().into_iter().map(|r| (r.tid, r)).collect(),
        None => HashMap::new(),
    };
    if let Some(d) = &mut native_dump {
        d.capture(&tasks);
    }
    // Each CPU's task clock now, read once (see `off_cpu_for`).
    let mut clocks: HashMap<u32, Option<f64>> = HashMap::new();
    let mut symbols = Symbols::new();
    if kernel_frames {
        for r in tasks.values() {
            symbols.note_kernel_stack(&r.kstack[..(r.kstack_len as usize).min(r.kstack.len())]);
        }
        symbols.resolve_pending();
    }
    pids.sort_unstable();
    pids.into_iter()
        .filter_map(|pid| {
            let stat = procinfo::stat(pid)?;
            let threads = proc_threads(pid);
            let memory = Memory::new(pid);
            let proc = python.get_mut(pid);
            let version = proc.as_ref().map(|p| p.version().to_string());
            let (index, holder) = match proc {
                Some(p) => {
                    p.refresh_thread_names();
                    (Some(p.thread_state_index()), p.gil_holder())
                }
                None => (None, None),
            };
            let holder_tid = holder.and_then(|h| {
                let index = index.as_ref()?;
                index.by_tid.iter().find(|&(_, &t)| t == h).map(|(&tid, _)| tid).or_else(|| {
                    let pthread = index.by_pthread.iter().find(|&(_, &t)| t == h)?.0;
                    tasks.values().find(|r| r.tgid == pid && r.fsbase == *pthread).map(|r| r.tid)
                })
            });
            let threads = threads
                .into_iter()
                .map(|t| {
                    let task = tasks.get(&t.tid);
                    let on_cpu = task.filter(|_| t.state == 'R').and_then(cpu_state);
                    let runnable = matches!(on_cpu, Some(CpuState::Runnable { .. }));
                    let syscall = match task {
                        // A runnable thread is off the CPU: its saved registers hold still too.
                        Some(r) if r.flags & TASK_HAS_REGS != 0 && (r.state != 0 || runnable) => {
                            (r.syscall_nr >= 0).then_some((r.syscall_nr, r.args, r.sp))
                        }
                        _ => t.syscall,
                    };
                    let blocked = t.state == 'S' || t.state == 'D';
                    // A runnable thread's syscall is named (woken in a GIL wait, it still waits
                    // for the GIL), its wait is for a CPU.
                    let wait = syscall.filter(|_| blocked || runnable).map(|(nr, args, sp)| {
                        let state = if t.state == 'D' { off_state::UNINTERRUPTIBLE } else { off_state::SLEEPING };
                        let arg0 = recorded_arg0(&memory, nr, &args, sp);
                        (nr, classifier.classify(pid, state, nr, arg0))
                    });
                    let mut frames = Vec::new();
                    let mut py: Vec<PyFrame> = Vec::new();
                    if let (Some(index), Some(p)) = (&index, python.get_mut(pid))
                        && let Some((records, _)) =
                            p.thread_frames(index, t.tid, task.map(|r| r.fsbase), profiler_common::MAX_PY_FRAMES)
                    {
                        for rec in &records {
                            let shown = match p.resolve(rec) {
                                Resolved::Frame(f) => {
                                    Some(DumpFrame { function: f.function, file: f.file, line: f.line })
                                }
                                Resolved::Unknown => {
                                    Some(DumpFrame { function: "[unknown]".into(), file: String::new(), line: None })
                                }
                                Resolved::Hidden => None,
                            };
                            frames.extend(shown.clone());
                            py.push((*rec, shown));
                        }
                    }
                    let gil = if holder_tid == Some(t.tid) {
                        Some("holding".to_string())
                    } else if wait.as_ref().is_some_and(|(_, w)| w.category == Category::Gil) {
                        Some("waiting".to_string())
                    } else {
                        None
                    };
                    let kernel = match task {
                        Some(r) if kernel_frames => r.kstack[..(r.kstack_len as usize).min(r.kstack.len())]
                            .iter()
                            .enumerate()
                            .map(|(i, &a)| symbols.kernel_symbol(a, i).unwrap_or("[unknown]").to_string())
                            .collect(),
                        _ => Vec::new(),
                    };
                    let (native, native_note) = match &mut native_dump {
                        Some(d) => {
                            let p = python.get_mut(pid).map(|p| &*p);
                            let (stack, note) = d.thread(pid, t.tid, t.state == 'R' && !runnable, &py, p);
                            (Some(stack), note)
                        }
                        None => (None, None),
                    };
                    let (state, category) = match on_cpu {
                        Some(CpuState::Running { .. }) => ("running", None),
                        Some(CpuState::Runnable { .. }) => ("runnable", Some(Category::Runqueue.name().to_string())),
                        None => (state_name(t.state), wait.as_ref().map(|(_, w)| w.category.name().to_string())),
                    };
                    DumpThread {
                        tid: t.tid,
                        name: procinfo::thread_comm(pid, t.tid).unwrap_or_default(),
                        python_name: python.thread_name(pid, t.tid).map(str::to_string),
                        state: state.to_string(),
                        syscall: wait.as_ref().map(|(nr, _)| syscalls::name(*nr as u64).into_owned()),
                        target: wait.as_ref().and_then(|(_, w)| w.target.clone()),
                        category,
                        blocked_s: if blocked { off_cpu_for(pid, t.tid, &mut clocks) } else { None },
                        gil,
                        frames,
                        kernel_frames: kernel,
                        native,
                        native_note,
                        cpu: match on_cpu {
                            Some(CpuState::Running { cpu } | CpuState::Runnable { cpu, .. }) => Some(cpu),
                            None => None,
                        },
                        runqueue_s: match on_cpu {
                            Some(CpuState::Runnable { queued_s, .. }) => queued_s,
                            _ => None,
                        },
                        preempted: matches!(on_cpu, Some(CpuState::Runnable { in_syscall: Some(false), .. })),
                    }
                })
                .collect();
            Some(DumpProcess {
                pid,
                comm: stat.comm,
                cmdline: procinfo::cmdline(pid),
                python_version: version,
                threads,
            })
        })
        .collect()
}
