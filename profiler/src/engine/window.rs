//! Profiles of consecutive windows, merged into the profile of a longer span, and a bounded
//! ring of them (`daemon`: the last 10 minutes at 10 s resolution; `top`: since it started).
use std::collections::{HashMap, VecDeque};

use crate::model::{
    Category, Frame, ProcessProfile, Profile,
    analysis::{function_table, loop_stalls},
    profile::cmp_frames,
};

/// Adds `other` (a later window) into `into`: durations, counts, per-process, per-thread and
/// per-stack times add up; names come from the later window.
pub fn merge(into: &mut Profile, other: &Profile) {
    into.duration_ns += other.duration_ns;
    into.samples += other.samples;
    into.lost_events += other.lost_events;
    into.off_cpu_events += other.off_cpu_events;
    into.off_cpu_stacks_sampled_out += other.off_cpu_stacks_sampled_out;
    into.start_time_unix = into.start_time_unix.min(other.start_time_unix);
    if other.bpf_stats.is_some() {
        into.bpf_stats = other.bpf_stats.clone();
    }
    let index: HashMap<u32, usize> = into.processes.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    for p in &other.processes {
        match index.get(&p.pid) {
            Some(&i) => merge_process(&mut into.processes[i], p),
            None => into.processes.push(p.clone()),
        }
    }
    into.processes.sort_by(|a, b| b.wall_ns.cmp(&a.wall_ns).then(b.samples.cmp(&a.samples)).then(a.pid.cmp(&b.pid)));
}

fn merge_process(into: &mut ProcessProfile, other: &ProcessProfile) {
    crate::model::tasks::merge_tasks(&mut into.tasks, &other.tasks);
    into.comm = other.comm.clone();
    if other.cmdline.is_some() {
        into.cmdline = other.cmdline.clone();
    }
    if other.python_version.is_some() {
        into.python_version = other.python_version.clone();
    }
    if other.ppid.is_some() {
        into.ppid = other.ppid;
    }
    if other.container.is_some() {
        into.container = other.container.clone();
    }
    into.samples += other.samples;
    into.wall_ns += other.wall_ns;
    into.totals_ns.add_all(&other.totals_ns);
    for t in &other.threads {
        match into.threads.iter_mut().find(|x| x.tid == t.tid) {
            Some(x) => {
                x.name = t.name.clone();
                if t.python_name.is_some() {
                    x.python_name = t.python_name.clone();
                }
                x.samples += t.samples;
                x.wall_ns += t.wall_ns;
                x.totals_ns.add_all(&t.totals_ns);
            }
            None => into.threads.push(t.clone()),
        }
    }
    into.threads.sort_by(|a, b| b.wall_ns.cmp(&a.wall_ns).then(b.samples.cmp(&a.samples)).then(a.tid.cmp(&b.tid)));
    type Key<'a> = (u32, Category, &'a [Frame], Option<&'a str>, Option<&'a str>, Option<&'a str>, bool);
    let mut index: HashMap<Key, usize> = HashMap::new();
    for (i, s) in into.stacks.iter().enumerate() {
        index.insert(
            (
                s.tid,
                s.category,
                &s.frames,
                s.syscall.as_deref(),
                s.target.as_deref(),
                s.coroutine.as_deref(),
                s.stalls_loop,
            ),
            i,
        );
    }
    let mut additions = Vec::new();
    let mut updates = Vec::new();
    for s in &other.stacks {
        let key = (
            s.tid,
            s.category,
            &s.frames[..],
            s.syscall.as_deref(),
            s.target.as_deref(),
            s.coroutine.as_deref(),
            s.stalls_loop,
        );
        match index.get(&key) {
            Some(&i) => updates.push((i, s)),
            None => additions.push(s.clone()),
        }
    }
    drop(index);
    for (i, s) in updates {
        let x = &mut into.stacks[i];
        x.samples += s.samples;
        x.weight_ns += s.weight_ns;
        x.thread = s.thread.clone();
    }
    into.stacks.extend(additions);
    into.stacks.sort_by(|a, b| {
        b.weight_ns.cmp(&a.weight_ns).then(a.tid.cmp(&b.tid)).then_with(|| cmp_frames(&a.frames, &b.frames))
    });
    into.functions = function_table(&into.stacks);
    into.loop_stalls = loop_stalls(&into.stacks);
}

/// A window profile as kept in the ring: every stack's frames replaced by indexes into the
/// window's own table. On a busy host one 10 s window holds thousands of stacks of tens of
/// frames that mostly repeat (5,000 stacks, 35,000 frames, ~5 MB as strings); the table keeps
/// each distinct frame once.
struct Stored {
    /// The profile with every stack's `frames` emptied.
    profile: Profile,
    frames: Vec<Frame>,
    /// Per process, per stack: indexes into `frames`.
    stacks: Vec<Vec<Box<[u32]>>>,
}

impl Stored {
    fn new(mut profile: Profile) -> Self {
        let mut ids: HashMap<Frame, u32> = HashMap::new();
        let mut frames: Vec<Frame> = Vec::new();
        let mut stacks = Vec::with_capacity(profile.processes.len());
        for p in &mut profile.processes {
            let mut per_stack = Vec::with_capacity(p.stacks.len());
            for s in &mut p.stacks {
                let interned: Box<[u32]> = std::mem::take(&mut s.frames)
                    .into_iter()
                    .map(|f| {
                        *ids.entry(f).or_insert_with_key(|f| {
                            frames.push(f.clone());
                            frames.len() as u32 - 1
                        })
                    })
                    .collect();
                per_stack.push(interned);
            }
            p.stacks.shrink_to_fit();
            per_stack.shrink_to_fit();
            stacks.push(per_stack);
        }
        frames.shrink_to_fit();
        Stored { profile, frames, stacks }
    }

    fn duration_ns(&self) -> u64 {
        self.profile.duration_ns
    }

    fn expand(&self) -> Profile {
        let mut profile = self.profile.clone();
        for (p, ids) in profile.processes.iter_mut().zip(&self.stacks) {
            for (s, frames) in p.stacks.iter_mut().zip(ids) {
                s.frames = frames.iter().map(|&i| self.frames[i as usize].clone()).collect();
            }
        }
        profile
    }
}

/// The last `capacity` window profiles, oldest first, stored compactly.
pub struct Windows {
    windows: VecDeque<Stored>,
    capacity: usize,
}

impl Windows {
    pub fn new(capacity: usize) -> Self {
        Self { windows: VecDeque::with_capacity(capacity), capacity: capacity.max(1) }
    }

    pub fn push(&mut self, window: Profile) {
        while self.windows.len() >= self.capacity {
            self.windows.pop_front();
        }
        self.windows.push_back(Stored::new(window));
    }

    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The newest windows that together cover at least `secs` seconds (all of them if they
    /// cover less), plus `current` (the window in progress) when given, merged oldest first.
    pub fn last(&self, secs: f64, current: Option<&Profile>) -> Option<Profile> {
        let want = (secs * 1e9) as u64;
        let mut covered = current.map_or(0, |c| c.duration_ns);
        let mut taken = 0;
        for w in self.windows.iter().rev() {
            if covered >= want {
                break;
            }
            covered += w.duration_ns();
            taken += 1;
        }
        let mut merged: Option<Profile> = None;
        for w in self.windows.iter().skip(self.windows.len() - taken) {
            let w = w.expand();
            match &mut merged {
                Some(m) => merge(m, &w),
                None => merged = Some(w),
            }
        }
        match (&mut merged, current) {
            (Some(m), Some(c)) => merge(m, c),
            (None, Some(c)) => merged = Some(c.clone()),
            _ => {}
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Mode, PythonFrame, StackProfile, ThreadProfile, Totals,
        profile::{FORMAT_NAME, FORMAT_VERSION},
    };

    fn window(start: f64, cpu_ns: u64, net_ns: u64) -> Profile {
        let totals =
            |cpu: u64, net: u64| -> Totals { [(Category::Cpu, cpu), (Category::Net, net)].into_iter().collect() };
        let stack = |category, ns, samples| StackProfile {
            tid: 2,
            thread: "w".into(),
            frames: vec![Frame::Python(PythonFrame {
                function: "main".into(),
                file: "a.py".into(),
                line: Some(1),
                first_line: 1,
            })],
            samples,
            category,
            weight_ns: ns,
            syscall: None,
            target: None,
            coroutine: None,
            stalls_loop: false,
        };
        Profile {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            duration_ns: 1_000_000_000,
            frequency_hz: 100,
            cpus: 2,
            lost_events: 1,
            samples: cpu_ns / 10_000_000,
            mode: Mode::Wall,
            off_cpu: true,
            off_cpu_threshold_ns: 0,
            off_cpu_events: 1,
            off_cpu_stacks_sampled_out: 0,
            start_time_unix: start,
            bpf_stats: None,
            processes: vec![ProcessProfile {
                container: None,
                pid: 1,
                ppid: None,
                comm: "app".into(),
                cmdline: None,
                python_version: Some("3.12.1".into()),
                samples: cpu_ns / 10_000_000,
                wall_ns: cpu_ns + net_ns,
                totals_ns: totals(cpu_ns, net_ns),
                functions: vec![],
                loop_stalls: vec![],
                tasks: vec![],
                threads: vec![ThreadProfile {
                    tid: 2,
                    name: "w".into(),
                    python_name: None,
                    samples: cpu_ns / 10_000_000,
                    wall_ns: cpu_ns + net_ns,
                    totals_ns: totals(cpu_ns, net_ns),
                }],
                stacks: vec![stack(Category::Cpu, cpu_ns, cpu_ns / 10_000_000), stack(Category::Net, net_ns, 1)],
            }],
        }
    }

    #[test]
    fn windows_add_up() {
        let mut ring = Windows::new(3);
        for i in 0..5 {
            ring.push(window(i as f64, 100_000_000 * (i + 1), 10_000_000));
        }
        assert_eq!(ring.len(), 3);
        // The last 1.5 s: the two newest windows (4 and 5).
        let last = ring.last(1.5, None).unwrap();
        assert_eq!((last.duration_ns, last.start_time_unix, last.lost_events), (2_000_000_000, 3.0, 2));
        let p = &last.processes[0];
        assert_eq!(p.totals_ns[Category::Cpu], 900_000_000);
        assert_eq!(p.wall_ns, 920_000_000);
        assert_eq!((p.threads.len(), p.threads[0].totals_ns[Category::Net]), (1, 20_000_000));
        assert_eq!(p.stacks.len(), 2);
        assert_eq!(p.stacks[0].weight_ns, 900_000_000);
        assert_eq!(p.functions[0].wall_ns, 920_000_000);
        // With the window in progress, and more than is kept: everything.
        let current = window(5.0, 50_000_000, 0);
        let all = ring.last(600.0, Some(&current)).unwrap();
        assert_eq!(all.duration_ns, 4_000_000_000);
        assert_eq!(all.processes[0].totals_ns[Category::Cpu], 300_000_000 + 400_000_000 + 500_000_000 + 50_000_000);
        assert!(Windows::new(2).last(10.0, None).is_none());
        // Stored compactly, given back whole.
        let stored = Stored::new(window(1.0, 100_000_000, 10_000_000));
        assert_eq!(stored.frames.len(), 1);
        let back = stored.expand();
        let orig = window(1.0, 100_000_000, 10_000_000);
        assert_eq!(serde_json::to_string(&back).unwrap(), serde_json::to_string(&orig).unwrap());
    }
}
