//! Turns what [`Aggregator`] accumulated, and each thread's exact totals, into the model's
//! per-process profiles: stacks root first (Python frames or the native user stack, then the
//! native leaf, then kernel frames), threads with their split by category, the part of each
//! thread's waits that no stack carries, function tables and loop stalls.
//!
//! Everything this needs from the live system (native symbols, Python thread names, /proc)
//! comes through [`Lookups`], so it is tested without any.
use std::collections::HashMap;

use super::{
    aggregate::{Aggregator, LoopWait, NO_FRAME, ON_CPU, RawFrame, RawStack, Weight},
    totals::ThreadTotals,
};
use crate::host::cgroup::CgroupIdentity;
use crate::model::{
    CATEGORIES, Category, Container, Frame, Marker, ProcessProfile, StackProfile, ThreadProfile, Totals,
    analysis::{function_table, loop_stalls},
    profile::cmp_frames,
};

/// The model's view of what a process's cgroup names.
pub fn container(c: CgroupIdentity) -> Container {
    Container { id: c.container_id, runtime: c.runtime.map(str::to_string), pod_uid: c.pod_uid, cgroup: c.cgroup }
}

/// What building a profile asks of the live system.
pub trait Lookups {
    /// A user stack entry (index 0 = leaf) of process `pid`.
    fn user_frame(&self, pid: u32, addr: u64, index: usize) -> Frame;
    /// A kernel stack entry (index 0 = leaf).
    fn kernel_frame(&self, addr: u64, index: usize) -> Frame;
    /// `threading.Thread.name` of a Python thread.
    fn python_thread_name(&self, pid: u32, tid: u32) -> Option<String>;
    /// The CPython version of a process we unwound.
    fn python_version(&self, pid: u32) -> Option<String>;
    /// Name, command line and parent of a process never sampled (seen only through its
    /// totals), and the command line of one whose first sample came too early to read it.
    fn process_names(&self, pid: u32) -> ProcessNames;
    /// The followed process that forked `pid` (exact, even once `pid` is re-parented).
    fn forked_by(&self, pid: u32) -> Option<u32>;
    /// Cgroup of a process never sampled (None when it is gone).
    fn cgroup(&self, _pid: u32) -> Option<CgroupIdentity> {
        None
    }
    /// OS name of a thread never sampled.
    fn thread_name(&self, pid: u32, tid: u32) -> Option<String>;
}

/// What /proc says of a process, for [`Lookups::process_names`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessNames {
    pub comm: Option<String>,
    pub cmdline: Option<String>,
    pub ppid: Option<u32>,
}

/// Target text of the stackless part of a thread's waits.
pub const SHORT_WAITS: &str = "short waits (no stack)";

/// A stack being built: its frames and what tells it apart from other stacks of its process.
type StackKey = (u32, u32, Vec<Frame>, LoopWait);

/// The per-process profiles, heaviest first. `totals` holds each thread's exact time per
/// category when off-CPU time was tracked; the part of it no stack carries (intervals under
/// the threshold) becomes a stackless entry, or scales the stacks kept of a thread whose
/// stacks the kernel rate-limited.
pub fn build(agg: &Aggregator, lookups: &dyn Lookups, totals: &ThreadTotals) -> Vec<ProcessProfile> {
    let mut by_pid: HashMap<u32, HashMap<StackKey, Weight>> = HashMap::new();
    for (raw, w) in &agg.stacks {
        let frames = frames_of(agg, raw, lookups);
        let e = by_pid.entry(raw.pid).or_default().entry((raw.tid, raw.wait, frames, raw.on_loop)).or_default();
        e.samples += w.samples;
        e.ns += w.ns;
    }
    for &(pid, _) in totals.keys() {
        by_pid.entry(pid).or_default();
    }
    let mut processes: Vec<ProcessProfile> = by_pid
        .into_iter()
        .map(|(pid, stacks)| build_process(agg, pid, stacks, lookups, totals))
        .filter(|p| p.samples > 0 || p.wall_ns > 0)
        .collect();
    processes.sort_by(|a, b| b.wall_ns.cmp(&a.wall_ns).then(b.samples.cmp(&a.samples)).then(a.pid.cmp(&b.pid)));
    processes
}

/// A raw stack's frames, root first.
fn frames_of(agg: &Aggregator, raw: &RawStack, lookups: &dyn Lookups) -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::with_capacity(raw.user.len() + raw.kernel.len());
    for f in raw.user.iter() {
        frames.push(match *f {
            RawFrame::Interned(id) => agg.frames.frame[id as usize].clone(),
            RawFrame::Native { addr, leaf } => lookups.user_frame(raw.pid, addr, if leaf { 0 } else { 1 }),
        });
    }
    // A frame-pointer walk that reached an address that is not code ends there, marked: the
    // native frames rootward of it came from the same bad frame pointer.
    if let Some(cut) = frames.iter().rposition(|f| *f == Frame::Marker(Marker::NotCode)) {
        let mut at = 0;
        frames.retain(|f| {
            let keep = at >= cut || !matches!(f, Frame::Native(_) | Frame::Marker(Marker::NotCode));
            at += 1;
            keep
        });
    }
    for (i, &addr) in raw.kernel.iter().enumerate().rev() {
        frames.push(lookups.kernel_frame(addr, i));
    }
    if frames.is_empty() && raw.wait == ON_CPU {
        // Sampled in the kernel with no user context to unwind (exec, exit, a page fault...):
        // say so rather than leave a stack with no frame.
        frames.push(Frame::Marker(Marker::NoUserStack));
    }
    frames
}

fn build_process(
    agg: &Aggregator,
    pid: u32,
    stacks: HashMap<StackKey, Weight>,
    lookups: &dyn Lookups,
    totals: &ThreadTotals,
) -> ProcessProfile {
    let mut tids: Vec<u32> = agg.threads.keys().filter(|(p, _)| *p == pid).map(|&(_, t)| t).collect();
    tids.extend(totals.keys().filter(|(p, _)| *p == pid).map(|&(_, t)| t));
    tids.sort_unstable();
    tids.dedup();

    let mut stacks: Vec<StackProfile> = stacks
        .into_iter()
        .map(|((tid, wait, frames, on_loop), w)| {
            let (category, syscall, target) = match agg.waits.get(wait as usize) {
                Some(wt) => (wt.category, wt.syscall.clone(), wt.target.clone()),
                None => (Category::Cpu, None, None),
            };
            StackProfile {
                tid,
                thread: String::new(),
                frames,
                samples: w.samples,
                category,
                weight_ns: w.ns,
                syscall,
                target,
                coroutine: (on_loop.coroutine != NO_FRAME)
                    .then(|| agg.frames.frame[on_loop.coroutine as usize].to_string()),
                stalls_loop: on_loop.stalled,
            }
        })
        .collect();

    let mut threads = Vec::new();
    for tid in tids {
        let (os_name, samples) = agg
            .threads
            .get(&(pid, tid))
            .cloned()
            .unwrap_or_else(|| (lookups.thread_name(pid, tid).unwrap_or_default(), 0));
        let by_category = match totals.get(&(pid, tid)) {
            Some(exact) => {
                let scale = agg.sampled_out.contains(&(pid, tid));
                account_waits(&mut stacks, tid, exact, scale);
                *exact
            }
            // Not tracked off the CPU: on-CPU samples × period.
            None => [(Category::Cpu, samples * agg.period_ns)].into_iter().collect(),
        };
        threads.push(ThreadProfile {
            tid,
            name: os_name,
            python_name: lookups.python_thread_name(pid, tid),
            samples,
            wall_ns: by_category.sum(),
            totals_ns: by_category,
        });
    }
    threads.sort_by(|a, b| b.wall_ns.cmp(&a.wall_ns).then(b.samples.cmp(&a.samples)).then(a.tid.cmp(&b.tid)));
    let labels: HashMap<u32, &str> = threads.iter().map(|t| (t.tid, t.label())).collect();
    for s in &mut stacks {
        s.thread = labels.get(&s.tid).map(|l| l.to_string()).unwrap_or_default();
    }
    stacks.sort_by(|a, b| {
        b.weight_ns.cmp(&a.weight_ns).then(a.tid.cmp(&b.tid)).then_with(|| cmp_frames(&a.frames, &b.frames))
    });

    let mut totals_ns = Totals::default();
    for t in &threads {
        totals_ns.add_all(&t.totals_ns);
    }
    let (comm, cmdline, ppid) = match agg.processes.get(&pid) {
        Some(info) if info.cmdline.is_some() => (Some(info.comm.clone()), info.cmdline.clone(), info.ppid),
        Some(info) => (Some(info.comm.clone()), lookups.process_names(pid).cmdline, info.ppid),
        None => {
            let names = lookups.process_names(pid);
            (names.comm, names.cmdline, names.ppid)
        }
    };
    let container = match agg.processes.get(&pid).and_then(|info| info.cgroup.clone()) {
        Some(cgroup) => Some(cgroup),
        None => lookups.cgroup(pid),
    }
    .map(container);
    ProcessProfile {
        pid,
        ppid: lookups.forked_by(pid).or(ppid),
        comm: comm.unwrap_or_default(),
        cmdline,
        python_version: lookups.python_version(pid),
        container,
        samples: threads.iter().map(|t| t.samples).sum(),
        wall_ns: threads.iter().map(|t| t.wall_ns).sum(),
        totals_ns,
        functions: function_table(&stacks),
        loop_stalls: loop_stalls(&stacks),
        threads,
        stacks,
        tasks: Vec::new(),
    }
}

/// Makes a thread's off-CPU stacks add up to its exact totals. Waits no stack carries were
/// shorter than the threshold, or over the stack rate: when the kernel skipped stacks of this
/// thread (`scale`), the kept ones are a sample of its waits and their weights are scaled to
/// the exact total of their category; otherwise what is left becomes a stackless entry.
///
/// On-CPU stacks weigh samples × period, an estimate: they are scaled to the thread's exact
/// on-CPU time, so they add up to it and none exceeds the thread; a thread with on-CPU time
/// and no sample gets an `[on CPU, not sampled]` stack of that time. Stacks of a category that
/// weigh more than its exact total (a wait that began in an earlier window weighs all of
/// itself when it ends) are scaled down to it.
fn account_waits(stacks: &mut Vec<StackProfile>, tid: u32, exact: &Totals, scale: bool) {
    let on_cpu = exact.get(Category::Cpu);
    let sampled: u64 = stacks.iter().filter(|s| s.tid == tid && s.category == Category::Cpu).map(|s| s.weight_ns).sum();
    if on_cpu > 0 && sampled > 0 && on_cpu != sampled {
        scale_weights(stacks.iter_mut().filter(|s| s.tid == tid && s.category == Category::Cpu), sampled, on_cpu);
    }
    // A thread that ran too little for any sample to land in it still has its CPU time
    // carried by a stack: a marker, as its short waits are.
    if on_cpu > 0 && sampled == 0 {
        stacks.push(StackProfile {
            tid,
            thread: String::new(),
            frames: vec![Frame::Marker(Marker::Unsampled)],
            samples: 0,
            category: Category::Cpu,
            weight_ns: on_cpu,
            syscall: None,
            target: None,
            coroutine: None,
            stalls_loop: false,
        });
    }
    for &c in &CATEGORIES[1..] {
        let total = exact.get(c);
        let stacked: u64 = stacks.iter().filter(|s| s.tid == tid && s.category == c).map(|s| s.weight_ns).sum();
        if stacked > total {
            scale_weights(stacks.iter_mut().filter(|s| s.tid == tid && s.category == c), stacked, total);
            continue;
        }
        if scale && stacked > 0 && total > stacked {
            scale_weights(stacks.iter_mut().filter(|s| s.tid == tid && s.category == c), stacked, total);
            continue;
        }
        if total > stacked {
            stacks.push(StackProfile {
                tid,
                thread: String::new(),
                frames: Vec::new(),
                samples: 0,
                category: c,
                weight_ns: total - stacked,
                syscall: None,
                target: Some(SHORT_WAITS.to_string()),
                coroutine: None,
                stalls_loop: false,
            });
        }
    }
}

/// Scales stacks weighing `from` in all to weigh `to`, keeping their proportions and the sum
/// exact (the rounding remainder goes to the heaviest).
fn scale_weights<'a>(stacks: impl Iterator<Item = &'a mut StackProfile>, from: u64, to: u64) {
    let mut stacks: Vec<&mut StackProfile> = stacks.collect();
    let mut given = 0u64;
    for s in stacks.iter_mut() {
        s.weight_ns = (s.weight_ns as u128 * to as u128 / from.max(1) as u128) as u64;
        given += s.weight_ns;
    }
    if let Some(heaviest) = stacks.iter_mut().max_by_key(|s| s.weight_ns) {
        heaviest.weight_ns += to.saturating_sub(given);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NativeFrame, PythonFrame, Wait};

    /// Symbols as `fn_ADDR`, kernel frames as `k_ADDR`, Python thread names for tid 11 only.
    struct Fake;

    impl Lookups for Fake {
        fn user_frame(&self, _pid: u32, addr: u64, _index: usize) -> Frame {
            Frame::native(format!("fn_{addr:x}"))
        }
        fn kernel_frame(&self, addr: u64, _index: usize) -> Frame {
            Frame::Kernel(Some(format!("k_{addr:x}")))
        }
        fn python_thread_name(&self, _pid: u32, tid: u32) -> Option<String> {
            (tid == 11).then(|| "MainThread".to_string())
        }
        fn python_version(&self, pid: u32) -> Option<String> {
            (pid == 10).then(|| "3.12.1".to_string())
        }
        fn process_names(&self, pid: u32) -> ProcessNames {
            ProcessNames { comm: Some(format!("unsampled{pid}")), cmdline: None, ppid: Some(1) }
        }
        fn forked_by(&self, pid: u32) -> Option<u32> {
            (pid == 10).then_some(9)
        }
        fn thread_name(&self, _pid: u32, tid: u32) -> Option<String> {
            Some(format!("os{tid}"))
        }
    }

    fn py(function: &str, line: i32) -> Frame {
        Frame::Python(PythonFrame {
            function: function.into(),
            file: "/srv/app.py".into(),
            line: Some(line),
            first_line: 1,
        })
    }

    fn net() -> Wait {
        Wait { category: Category::Net, syscall: Some("recvfrom".into()), target: Some("tcp 10.0.0.5:5432".into()) }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn stacks_are_root_first_with_native_leaf_then_kernel_frames() {
        let mut agg = Aggregator::new(100);
        agg.add_raw(10, 11, None, &[py("main", 3), py("work", 9)], &[0xa1], &[0xb1, 0xb2], (3, 30 * MS));
        agg.add_raw(10, 11, None, &[], &[], &[], (1, 10 * MS));
        let p = &build(&agg, &Fake, &ThreadTotals::new())[0];
        assert_eq!((p.pid, p.comm.as_str(), p.python_version.as_deref()), (10, "proc10", Some("3.12.1")));
        // The process that forked it, when followed.
        assert_eq!(p.ppid, Some(9));
        let s = &p.stacks[0];
        let text: Vec<String> = s.frames.iter().map(Frame::to_string).collect();
        assert_eq!(text, ["main (/srv/app.py:3)", "work (/srv/app.py:9)", "fn_a1", "[kernel] k_b2", "[kernel] k_b1"]);
        assert_eq!((s.samples, s.weight_ns, s.thread.as_str()), (3, 30 * MS, "MainThread"));
        // An on-CPU sample with no stack at all says so.
        assert_eq!(p.stacks[1].frames, [Frame::Marker(Marker::NoUserStack)]);
        // Without exact totals, a thread's CPU time is samples × period.
        assert_eq!(p.threads[0].totals_ns[Category::Cpu], 4 * 10 * MS);
        assert_eq!(p.functions.iter().find(|f| f.function == "work").map(|f| f.own_ns), Some(30 * MS));
    }

    #[test]
    fn on_cpu_time_no_sample_landed_in_is_carried_by_a_marker() {
        let agg = Aggregator::new(100);
        let exact: Totals = [(Category::Cpu, 4 * MS), (Category::Disk, 96 * MS)].into_iter().collect();
        let totals: ThreadTotals = [((10, 11), exact)].into_iter().collect();
        let p = &build(&agg, &Fake, &totals)[0];
        let cpu: Vec<_> = p.stacks.iter().filter(|s| s.category == Category::Cpu).collect();
        assert_eq!(cpu.len(), 1);
        assert_eq!(
            (cpu[0].frames.as_slice(), cpu[0].weight_ns),
            ([Frame::Marker(Marker::Unsampled)].as_slice(), 4 * MS)
        );
        assert_eq!(cpu[0].frames[0].to_string(), "[on CPU, not sampled]");
    }

    #[test]
    fn waits_no_stack_carries_become_a_stackless_entry_and_stacks_add_up() {
        let mut agg = Aggregator::new(100);
        agg.add_raw(10, 11, None, &[py("main", 3)], &[], &[], (2, 20 * MS));
        agg.add_raw(10, 11, Some(net()), &[py("main", 4)], &[], &[], (1, 70 * MS));
        let exact: Totals =
            [(Category::Cpu, 25 * MS), (Category::Net, 100 * MS), (Category::Sleep, 5 * MS)].into_iter().collect();
        let totals: ThreadTotals =
            [((10, 11), exact), ((10, 12), [(Category::Sleep, 9 * MS)].into_iter().collect())].into_iter().collect();
        let p = &build(&agg, &Fake, &totals)[0];
        let t = p.threads.iter().find(|t| t.tid == 11).unwrap();
        assert_eq!((t.wall_ns, t.totals_ns), (130 * MS, exact));
        let sum =
            |tid, c| p.stacks.iter().filter(|s| s.tid == tid && s.category == c).map(|s| s.weight_ns).sum::<u64>();
        assert_eq!((sum(11, Category::Net), sum(11, Category::Sleep)), (100 * MS, 5 * MS));
        let short =
            p.stacks.iter().find(|s| s.tid == 11 && s.category == Category::Net && s.frames.is_empty()).unwrap();
        assert_eq!((short.weight_ns, short.target.as_deref()), (30 * MS, Some(SHORT_WAITS)));
        // A thread seen only through its totals gets its OS name from the lookups.
        let idle = p.threads.iter().find(|t| t.tid == 12).unwrap();
        assert_eq!((idle.name.as_str(), idle.samples, idle.wall_ns), ("os12", 0, 9 * MS));
        assert_eq!(p.totals_ns[Category::Sleep], 14 * MS);
        // A process seen only through totals is named by the lookups.
        let only_totals: ThreadTotals =
            [((20, 21), [(Category::Sleep, MS)].into_iter().collect())].into_iter().collect();
        let unsampled = &build(&Aggregator::new(100), &Fake, &only_totals)[0];
        assert_eq!((unsampled.comm.as_str(), unsampled.ppid), ("unsampled20", Some(1)));
    }

    #[test]
    fn rate_limited_threads_have_their_kept_stacks_scaled_to_the_exact_total() {
        let mut agg = Aggregator::new(100);
        agg.add_raw(10, 11, Some(net()), &[py("a", 1)], &[], &[], (1, 30 * MS));
        agg.add_raw(10, 11, Some(net()), &[py("b", 2)], &[], &[], (1, 10 * MS));
        agg.sampled_out.insert((10, 11));
        let totals: ThreadTotals =
            [((10, 11), [(Category::Net, 100 * MS + 1)].into_iter().collect())].into_iter().collect();
        let p = &build(&agg, &Fake, &totals)[0];
        let weights: Vec<u64> = p.stacks.iter().map(|s| s.weight_ns).collect();
        // 3:1 kept, the rounding remainder on the heaviest, no stackless entry.
        assert_eq!(weights, [75 * MS + 1, 25 * MS]);
    }

    #[test]
    fn on_cpu_stacks_add_up_to_the_exact_on_cpu_time_and_waits_never_exceed_theirs() {
        let mut agg = Aggregator::new(100);
        // 14 samples × 10 ms = 140 ms sampled; the kernel timed 100 ms on the CPU.
        agg.add_raw(10, 11, None, &[py("a", 1)], &[], &[], (10, 100 * MS));
        agg.add_raw(10, 11, None, &[py("b", 2)], &[], &[], (4, 40 * MS));
        // A wait that began in an earlier window weighs all of itself when it ends.
        agg.add_raw(10, 11, Some(net()), &[py("c", 3)], &[], &[], (1, 500 * MS));
        let exact: Totals = [(Category::Cpu, 100 * MS), (Category::Net, 200 * MS)].into_iter().collect();
        let totals: ThreadTotals = [((10, 11), exact)].into_iter().collect();
        let p = &build(&agg, &Fake, &totals)[0];
        let sum = |c| p.stacks.iter().filter(|s| s.category == c).map(|s| s.weight_ns).sum::<u64>();
        assert_eq!((sum(Category::Cpu), sum(Category::Net)), (100 * MS, 200 * MS));
        // Proportions kept: 10:4 of 100 ms.
        let cpu: Vec<u64> = p.stacks.iter().filter(|s| s.category == Category::Cpu).map(|s| s.weight_ns).collect();
        assert_eq!(cpu, [71_428_572, 28_571_428]);
        assert!(p.stacks.iter().all(|s| s.weight_ns <= p.threads[0].wall_ns));
    }

    #[test]
    fn a_native_stack_ends_at_its_first_address_that_is_not_code() {
        struct DataAt3;
        impl Lookups for DataAt3 {
            fn user_frame(&self, pid: u32, addr: u64, index: usize) -> Frame {
                if addr == 3 { Frame::Marker(Marker::NotCode) } else { Fake.user_frame(pid, addr, index) }
            }
            fn kernel_frame(&self, addr: u64, index: usize) -> Frame {
                Fake.kernel_frame(addr, index)
            }
            fn python_thread_name(&self, pid: u32, tid: u32) -> Option<String> {
                Fake.python_thread_name(pid, tid)
            }
            fn python_version(&self, pid: u32) -> Option<String> {
                Fake.python_version(pid)
            }
            fn process_names(&self, pid: u32) -> ProcessNames {
                Fake.process_names(pid)
            }
            fn forked_by(&self, pid: u32) -> Option<u32> {
                Fake.forked_by(pid)
            }
            fn thread_name(&self, pid: u32, tid: u32) -> Option<String> {
                Fake.thread_name(pid, tid)
            }
        }
        let mut agg = Aggregator::new(100);
        // Leaf first: two real frames, then data, then what the bad frame pointer led to.
        agg.add_raw(5, 5, None, &[], &[0x1, 0x2, 3, 0x4, 0x5], &[], (1, 10 * MS));
        agg.add_raw(5, 5, None, &[], &[0x1, 0x2, 3, 0x6], &[], (1, 10 * MS));
        let p = &build(&agg, &DataAt3, &ThreadTotals::new())[0];
        let text: Vec<String> = p.stacks[0].frames.iter().map(Frame::to_string).collect();
        // Both walks are one stack once cut.
        assert_eq!((p.stacks.len(), p.stacks[0].samples), (1, 2));
        assert_eq!(text, ["[not code]", "fn_2", "fn_1"]);
    }

    #[test]
    fn unknown_native_frames_keep_their_module() {
        struct Unknown;
        impl Lookups for Unknown {
            fn user_frame(&self, _: u32, _: u64, _: usize) -> Frame {
                Frame::Native(NativeFrame { symbol: None, module: Some("libx.so".into()), offset: None })
            }
            fn kernel_frame(&self, _: u64, _: usize) -> Frame {
                Frame::Kernel(None)
            }
            fn python_thread_name(&self, _: u32, _: u32) -> Option<String> {
                None
            }
            fn python_version(&self, _: u32) -> Option<String> {
                None
            }
            fn process_names(&self, _: u32) -> ProcessNames {
                ProcessNames::default()
            }
            fn forked_by(&self, _: u32) -> Option<u32> {
                None
            }
            fn thread_name(&self, _: u32, _: u32) -> Option<String> {
                None
            }
        }
        let mut agg = Aggregator::new(100);
        agg.add_raw(5, 5, None, &[], &[0x1], &[0x2], (1, 10 * MS));
        let p = &build(&agg, &Unknown, &ThreadTotals::new())[0];
        let text: Vec<String> = p.stacks[0].frames.iter().map(Frame::to_string).collect();
        assert_eq!(text, ["[unknown] (libx.so)", "[kernel] [unknown]"]);
        assert_eq!(p.stacks[0].thread, "thread5");
    }
}
