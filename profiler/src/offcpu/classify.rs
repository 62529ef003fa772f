//! What a thread's off-CPU time was spent waiting for: the category, the syscall and the target
//! (socket peer, file path...) behind each blocked interval.
use std::collections::HashMap;

use profiler_common::{futex_arg, off_state, poll_arg};

use crate::{
    model::{Category, Wait},
    offcpu::{
        fdinfo::{FdCache, FdTarget},
        kernel_target::{KernelTarget, KernelTargets},
        syscalls::{self, SyscallClass},
    },
};

/// Turns (state, syscall, first argument) into a [`Wait`], looking fds up in /proc while the
/// process still has them open. Results are cached per (pid, state, syscall, argument).
///
/// Everything kept per process sits under its pid, so that forgetting a process is one removal,
/// not a scan of every process's entries: with `--all`, a host starting 1,000 short-lived
/// processes a second has every one of them to forget (issue 13: before, only Python processes
/// were forgotten, and the classes of the others' waits piled up for the daemon's life).
pub struct Classifier {
    fds: FdCache,
    /// pid → (state, syscall, argument) → class.
    cache: HashMap<u32, HashMap<(u32, i64, u64), Wait>>,
    /// pid → address range of its GIL, for telling GIL waits from other futex waits.
    gil: HashMap<u32, (u64, u64)>,
    /// Processes whose locks wait in a parking lot (CPython 3.13+): a futex on the waiter's
    /// own stack there is a `PyMutex` (see `profiler_common::futex_arg`).
    parking_lot: std::collections::HashSet<u32>,
    /// (pid, syscall, argument) of waits seen, from their stacks, to be an event loop waiting
    /// for work: every interval with that key is idle time, stack or not.
    /// pid → (syscall, argument).
    loop_idle: HashMap<u32, std::collections::HashSet<(i64, u64)>>,
    /// Targets the kernel read at the syscall, waiting for their wait's stack event.
    kernel: KernelTargets,
    /// Bumped whenever an answer given before may change (see [`Classifier::generation`]).
    generation: u64,
}

impl Default for Classifier {
    fn default() -> Self {
        // Socket tables re-read at most 4 times a second: a connection made since the last
        // read shows without its peer until then.
        Self {
            fds: FdCache::new(std::time::Duration::from_millis(250)),
            cache: HashMap::new(),
            gil: HashMap::new(),
            parking_lot: Default::default(),
            loop_idle: Default::default(),
            kernel: Default::default(),
            generation: 0,
        }
    }
}

impl Classifier {
    pub fn set_gil(&mut self, pid: u32, range: (u64, u64)) {
        if self.gil.insert(pid, range) != Some(range) {
            // Futex waits of this process classified before its GIL was known: look again.
            self.cache.remove(&pid);
            self.generation += 1;
        }
    }

    /// Process `pid` waits for its own locks in CPython's parking lot (3.13+): futex waits on
    /// the waiter's stack are waits for a `PyMutex`.
    pub fn set_parking_lot(&mut self, pid: u32) {
        if self.parking_lot.insert(pid) {
            self.cache.remove(&pid);
            self.generation += 1;
        }
    }

    /// Process `pid` exited: drop its cached classes, descriptors and GIL range. A few hash
    /// removals, whatever the number of processes known.
    pub fn forget(&mut self, pid: u32) {
        let known = [
            self.cache.remove(&pid).is_some(),
            self.gil.remove(&pid).is_some(),
            self.parking_lot.remove(&pid),
            self.loop_idle.remove(&pid).is_some(),
        ];
        self.fds.forget_process(pid);
        // Answers given for a process never classified cannot change: the generation (which
        // makes `engine::repeats` work its remembered events out again) moves only when one
        // may have.
        if known.contains(&true) {
            self.generation += 1;
        }
    }

    /// How many processes have classes cached (the debug log of what is kept across windows).
    pub fn processes_cached(&self) -> usize {
        self.cache.len()
    }

    /// Changes whenever an answer of [`Classifier::classify_event`] for a stable wait (see
    /// [`Classifier::is_stable`]) may differ from the one given before: a GIL or parking lot
    /// learned, a loop's idle poll marked, a process forgotten. Callers that remember answers
    /// (`engine::repeats`) check it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a wait's class depends only on the call and this classifier's state (its
    /// generation), not on a descriptor: an fd can be reused and a socket gets its peer, so
    /// those are looked at again on every event.
    pub fn is_stable(syscall_nr: i64, arg0: u64) -> bool {
        syscall_nr < 0 || !(syscalls::fd_arg(syscall_nr as u64) || is_poll_with_fds(syscall_nr, arg0))
    }

    /// A stable wait's event whose class the caller remembered: what
    /// [`Classifier::classify_event`] does besides classifying (the kernel's record of the
    /// thread's descriptor is for this event only).
    pub fn skip_event(&mut self, tid: u32, syscall_nr: i64, arg0: u64) {
        let _ = self.kernel.take(tid, syscall_nr, arg0);
    }

    /// Marks a wait as an event loop's idle poll (seen so on a stack that had it): from now
    /// on its intervals are [`Category::Idle`], including the short ones that carry no stack.
    pub fn mark_loop_idle(&mut self, pid: u32, syscall_nr: i64, arg0: u64) {
        if self.loop_idle.entry(pid).or_default().insert((syscall_nr, arg0)) {
            self.generation += 1;
        }
    }

    /// What the kernel read from the descriptor of thread `t.tid`'s wait, just before the
    /// wait's stack event.
    pub fn kernel_target(&mut self, t: &KernelTarget) {
        self.kernel.record(t);
    }

    /// The kernel's record of thread `tid`'s descriptor came for a call whose first argument
    /// is none ([`Classifier::names_descriptor`]): it would only have replaced the thread's
    /// previous record, and so it does, without being decoded.
    pub fn unused_kernel_target(&mut self, tid: u32) {
        self.kernel.forget(tid);
    }

    /// Whether a wait in `syscall_nr` is named from its descriptor (the kernel's record of it,
    /// or /proc): its first argument is one. The kernel sends its record for other calls too
    /// (`clock_nanosleep`'s clock id read as a descriptor), and it is never used for them.
    pub fn names_descriptor(syscall_nr: i64) -> bool {
        syscall_nr >= 0 && syscalls::fd_arg(syscall_nr as u64)
    }

    /// A wait reported with its stack: named from the kernel's record of its descriptor when
    /// one came with it (the descriptor may be closed or reused by now), else as [`classify`].
    /// The kernel's answer is also kept as the last one for the (pid, state, syscall,
    /// argument) key, so the short waits on the same descriptor that carry no stack get it
    /// once the descriptor is gone.
    ///
    /// [`classify`]: Classifier::classify
    pub fn classify_event(&mut self, pid: u32, tid: u32, state: u32, syscall_nr: i64, arg0: u64) -> Wait {
        let kernel = self.kernel.take(tid, syscall_nr, arg0).flatten();
        let fd_wait = state != off_state::RUNNABLE && Self::names_descriptor(syscall_nr);
        let (Some(target), true) = (kernel, fd_wait) else {
            return self.classify(pid, state, syscall_nr, arg0);
        };
        let uninterruptible = state == off_state::UNINTERRUPTIBLE;
        let category = fd_category(&target, uninterruptible);
        let wait = Wait {
            category,
            syscall: Some(syscalls::name(syscall_nr as u64).into_owned()),
            target: Some(target.to_string()),
        };
        self.cache.entry(pid).or_default().insert((state, syscall_nr, arg0), wait.clone());
        if state == off_state::SLEEPING && self.is_loop_idle(pid, syscall_nr, arg0) {
            return Wait { category: Category::Idle, ..wait };
        }
        wait
    }

    /// The blocked part of an interval (its run-queue part is always [`Category::Runqueue`]).
    pub fn classify(&mut self, pid: u32, state: u32, syscall_nr: i64, arg0: u64) -> Wait {
        let mut wait = self.classify_by_fd(pid, state, syscall_nr, arg0);
        if state == off_state::SLEEPING && self.is_loop_idle(pid, syscall_nr, arg0) {
            wait.category = Category::Idle;
            wait.target.get_or_insert_with(|| LOOP_IDLE_TARGET.to_string());
        }
        wait
    }

    fn is_loop_idle(&self, pid: u32, syscall_nr: i64, arg0: u64) -> bool {
        self.loop_idle.get(&pid).is_some_and(|polls| polls.contains(&(syscall_nr, arg0)))
    }

    fn classify_by_fd(&mut self, pid: u32, state: u32, syscall_nr: i64, arg0: u64) -> Wait {
        let key = (state, syscall_nr, arg0);
        let fd_based = syscall_nr >= 0 && (syscalls::fd_arg(syscall_nr as u64) || is_poll_with_fds(syscall_nr, arg0));
        if let Some(w) = self.cache.get(&pid).and_then(|waits| waits.get(&key)) {
            if !fd_based {
                return w.clone();
            }
            // An fd can be closed and reused, and a socket's peer may not be listed yet: look
            // again while the process has it, keep the last answer once it is gone.
            let fresh = self.classify_uncached(pid, state, syscall_nr, arg0);
            let waits = self.cache.entry(pid).or_default();
            if fresh.target.is_none() {
                return waits[&key].clone();
            }
            waits.insert(key, fresh.clone());
            return fresh;
        }
        let wait = self.classify_uncached(pid, state, syscall_nr, arg0);
        self.cache.entry(pid).or_default().insert(key, wait.clone());
        wait
    }

    fn classify_uncached(&mut self, pid: u32, state: u32, syscall_nr: i64, arg0: u64) -> Wait {
        let uninterruptible = state == off_state::UNINTERRUPTIBLE;
        if state == off_state::RUNNABLE {
            return Wait { category: Category::Runqueue, syscall: None, target: None };
        }
        if syscall_nr < 0 {
            let category = if uninterruptible { Category::Disk } else { Category::Other };
            return Wait { category, syscall: None, target: None };
        }
        let nr = syscall_nr as u64;
        let name = syscalls::name(nr).into_owned();
        let (category, target) = match syscalls::class(nr) {
            SyscallClass::FdIo | SyscallClass::Poll if syscalls::fd_arg(nr) => {
                let fd = arg0 as i32;
                match self.fds.describe(pid, fd).cloned() {
                    Some(FdTarget::Epoll) => (epoll_category(pid, fd, &mut self.fds), None),
                    Some(t) => (fd_category(&t, uninterruptible), Some(t.to_string())),
                    None => (if uninterruptible { Category::Disk } else { Category::Other }, None),
                }
            }
            SyscallClass::Poll => match poll_fds(syscall_nr, arg0) {
                // No descriptor: a timed sleep (select(0, ...) is how CPython 3.8–3.10
                // implement time.sleep).
                Some(fds) if fds.is_empty() => (Category::Sleep, None),
                Some(fds) => self.poll_set_category(pid, &fds, uninterruptible),
                None => (Category::Other, None),
            },
            SyscallClass::FdIo => (if uninterruptible { Category::Disk } else { Category::Other }, None),
            SyscallClass::Futex => {
                let (addr, on_stack) = futex_arg::decode(arg0);
                if self.gil.get(&pid).is_some_and(|&(lo, hi)| (lo..hi).contains(&addr)) {
                    (Category::Gil, None)
                } else if on_stack && self.parking_lot.contains(&pid) {
                    (Category::Lock, Some(PYMUTEX_TARGET.to_string()))
                } else {
                    (Category::Lock, None)
                }
            }
            SyscallClass::Sleep => (Category::Sleep, None),
            SyscallClass::Wait => (Category::Ipc, None),
            SyscallClass::PathIo => (Category::Disk, None),
            SyscallClass::Other => (if uninterruptible { Category::Disk } else { Category::Other }, None),
        };
        Wait { category, syscall: Some(name), target }
    }
}

impl Classifier {
    /// A select/poll over several descriptors: waiting on a listening socket is waiting for
    /// work; else the first socket, else the first descriptor found decides.
    fn poll_set_category(&mut self, pid: u32, fds: &[i32], uninterruptible: bool) -> (Category, Option<String>) {
        let targets: Vec<FdTarget> = fds.iter().filter_map(|&fd| self.fds.describe(pid, fd).cloned()).collect();
        let pick = targets
            .iter()
            .find(|t| t.is_listening())
            .or_else(|| targets.iter().find(|t| t.is_socket()))
            .or_else(|| targets.first());
        match pick {
            Some(t) => (fd_category(t, uninterruptible), Some(t.to_string())),
            None => (Category::Other, None),
        }
    }
}

/// Target text of an event loop's idle waits whose descriptor says nothing more.
pub const LOOP_IDLE_TARGET: &str = "event loop";

/// Target of a lock wait in CPython's parking lot (3.13+): a `PyMutex` (`threading.Lock`, a
/// free-threaded build's per-object locks, the interpreter's own mutexes), as opposed to a
/// futex of the GIL or of a `pthread` lock (C extensions, libc), which have no target.
pub const PYMUTEX_TARGET: &str = "PyMutex";

fn is_poll_with_fds(syscall_nr: i64, arg0: u64) -> bool {
    poll_fds(syscall_nr, arg0).is_some_and(|fds| !fds.is_empty())
}

/// The descriptors a select/poll waits on, from what the kernel recorded in place of its first
/// argument (see [`poll_arg`]): empty for a timed sleep, None when unknown or not this family.
fn poll_fds(syscall_nr: i64, arg0: u64) -> Option<Vec<i32>> {
    poll_arg::decode(syscall_nr, arg0).map(|watched| watched.fds().collect())
}

fn fd_category(t: &FdTarget, uninterruptible: bool) -> Category {
    if t.is_listening() {
        return Category::Idle;
    }
    match t {
        FdTarget::Tcp { .. } | FdTarget::Udp { .. } | FdTarget::Unix { .. } | FdTarget::OtherSocket { .. } => {
            Category::Net
        }
        FdTarget::File { .. } | FdTarget::BlockDevice { .. } => Category::Disk,
        FdTarget::Pipe { .. } | FdTarget::EventFd | FdTarget::SignalFd | FdTarget::TimerFd | FdTarget::Epoll => {
            Category::Ipc
        }
        FdTarget::CharDevice { .. } | FdTarget::Other { .. } => {
            if uninterruptible {
                Category::Disk
            } else {
                Category::Other
            }
        }
    }
}

/// An epoll wait is a network wait when the set watches connected sockets, idle when it watches
/// only listening ones, else IPC. (An event loop's idle polls are recognised from their stacks
/// instead, see `aggregate::loop_state`.) The set is listed in /proc/PID/fdinfo/EPFD (`tfd:` lines).
fn epoll_category(pid: u32, epfd: i32, fds: &mut FdCache) -> Category {
    let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")) else { return Category::Ipc };
    let watched: Vec<i32> = info
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("tfd:"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    let sockets: Vec<bool> = watched
        .iter()
        .filter_map(|&fd| fds.describe(pid, fd).filter(|t| t.is_socket()).map(|t| t.is_listening()))
        .collect();
    match sockets.as_slice() {
        [] => Category::Ipc,
        // Only listening sockets: a server waiting for connections.
        all if all.iter().all(|&listening| listening) => Category::Idle,
        _ => Category::Net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_changes_when_a_stable_answer_may() {
        let mut c = Classifier::default();
        // clock_nanosleep and a futex are stable; read(fd) is looked at on every event.
        assert!(Classifier::is_stable(libc::SYS_clock_nanosleep, 0));
        assert!(Classifier::is_stable(libc::SYS_futex, 0x1000));
        assert!(Classifier::is_stable(-1, 0));
        assert!(!Classifier::is_stable(libc::SYS_read, 3));
        let g = c.generation();
        c.mark_loop_idle(1, libc::SYS_epoll_wait, 4);
        assert_eq!(c.generation(), g + 1);
        c.mark_loop_idle(1, libc::SYS_epoll_wait, 4);
        assert_eq!(c.generation(), g + 1, "marked already: no change");
        c.set_gil(1, (0x1000, 0x1100));
        c.set_gil(1, (0x1000, 0x1100));
        c.set_parking_lot(1);
        assert_eq!(c.generation(), g + 3);
        c.forget(1);
        assert_eq!(c.generation(), g + 4);
        c.forget(2);
        assert_eq!(c.generation(), g + 4, "nothing known of process 2: no answer can change");
    }

    #[test]
    fn an_unused_kernel_record_supersedes_the_threads_previous_one() {
        assert!(Classifier::names_descriptor(libc::SYS_read));
        assert!(Classifier::names_descriptor(libc::SYS_epoll_wait));
        assert!(!Classifier::names_descriptor(libc::SYS_clock_nanosleep));
        assert!(!Classifier::names_descriptor(libc::SYS_futex));
        assert!(!Classifier::names_descriptor(-1));
        let pipe = |tid| KernelTarget {
            pid: 1,
            tid,
            syscall_nr: libc::SYS_read,
            arg0: 5,
            flags: profiler_common::wait_target::target_flags::FILE,
            ino: 99,
            dev: 0,
            mode: profiler_common::wait_target::file_type::FIFO,
            sk_family: 0,
            sk_protocol: 0,
            sk_state: 0,
            local: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            parts: Vec::new(),
        };
        // No such process: /proc cannot name the descriptor.
        let pid = u32::MAX - 1;
        let unnamed = Classifier::default().classify_event(pid, 2, off_state::SLEEPING, libc::SYS_read, 5);
        let event = |c: &mut Classifier| c.classify_event(pid, 2, off_state::SLEEPING, libc::SYS_read, 5);
        let mut c = Classifier::default();
        c.kernel_target(&pipe(2));
        c.unused_kernel_target(3);
        let named = event(&mut c);
        assert_ne!(named, unnamed, "the kernel's record names the wait; another thread's does not touch it");
        // A fresh classifier: the first one keeps its answer for the wait's key.
        let mut c = Classifier::default();
        c.kernel_target(&pipe(2));
        c.unused_kernel_target(2);
        assert_eq!(event(&mut c), unnamed, "superseded, as a decoded record would have been");
    }

    #[test]
    fn forgetting_a_process_leaves_nothing_of_it() {
        let mut c = Classifier::default();
        for pid in 100..1100 {
            c.classify(pid, off_state::SLEEPING, libc::SYS_clock_nanosleep, 0);
            c.classify(pid, off_state::RUNNABLE, -1, 0);
        }
        c.classify(7, off_state::SLEEPING, libc::SYS_futex, 0x1000);
        c.mark_loop_idle(7, libc::SYS_epoll_wait, 4);
        assert_eq!(c.processes_cached(), 1001);
        for pid in 100..1100 {
            c.forget(pid);
        }
        assert_eq!(c.processes_cached(), 1, "only the live process is left");
        let w = c.classify(7, off_state::SLEEPING, libc::SYS_epoll_wait, 4);
        assert_eq!(w.category, Category::Idle, "the live process keeps its marks");
        c.forget(7);
        assert_eq!(c.processes_cached(), 0);
        assert!(c.loop_idle.is_empty() && c.gil.is_empty() && c.parking_lot.is_empty());
    }

    #[test]
    fn classifies_by_state_and_syscall() {
        let mut c = Classifier::default();
        let me = std::process::id();
        assert_eq!(c.classify(me, off_state::RUNNABLE, -1, 0).category, Category::Runqueue);
        assert_eq!(c.classify(me, off_state::UNINTERRUPTIBLE, -1, 0).category, Category::Disk);
        let sleep = c.classify(me, off_state::SLEEPING, libc::SYS_clock_nanosleep, 0);
        assert_eq!((sleep.category, sleep.syscall.as_deref()), (Category::Sleep, Some("clock_nanosleep")));
        c.set_gil(me, (0x1000, 0x1100));
        assert_eq!(c.classify(me, off_state::SLEEPING, libc::SYS_futex, 0x1040).category, Category::Gil);
        assert_eq!(c.classify(me, off_state::SLEEPING, libc::SYS_futex, 0x2000).category, Category::Lock);
        // A futex on the waiter's stack: a PyMutex once the process is known to park its
        // locks (CPython 3.13+), a plain lock before.
        let parked = futex_arg::encode(libc::SYS_futex, 0x7ffd_0000_0100, 0x7ffd_0000_0000);
        let wait = c.classify(me, off_state::SLEEPING, libc::SYS_futex, parked);
        assert_eq!((wait.category, wait.target), (Category::Lock, None));
        c.set_parking_lot(me);
        let wait = c.classify(me, off_state::SLEEPING, libc::SYS_futex, parked);
        assert_eq!((wait.category, wait.target.as_deref()), (Category::Lock, Some(PYMUTEX_TARGET)));
        assert_eq!(c.classify(me, off_state::SLEEPING, libc::SYS_futex, 0x2000).target, None);
        assert_eq!(c.classify(me, off_state::SLEEPING, libc::SYS_futex, 0x1040).category, Category::Gil);
        assert_eq!(c.classify(me, off_state::SLEEPING, libc::SYS_wait4, 0).category, Category::Ipc);
    }

    #[test]
    fn fds_give_the_category_and_target() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        use std::os::fd::AsRawFd;
        let mut c = Classifier::default();
        let me = std::process::id();
        let net = c.classify(me, off_state::SLEEPING, libc::SYS_recvfrom, client.as_raw_fd() as u64);
        assert_eq!(net.category, Category::Net);
        assert_eq!(net.target.as_deref(), Some(format!("tcp {addr}").as_str()));
        assert_eq!(net.leaf_frame(), format!("[net] recvfrom tcp {addr}"));
        let disk = c.classify(me, off_state::SLEEPING, libc::SYS_read, file.as_raw_fd() as u64);
        assert_eq!(disk.category, Category::Disk);
    }

    #[test]
    fn poll_family_waits_are_told_by_their_descriptors() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (lfd, cfd) = (listener.as_raw_fd() as u64, client.as_raw_fd() as u64);
        assert!(lfd < 64 && cfd < 64);
        let mut c = Classifier::default();
        let me = std::process::id();
        let select = libc::SYS_select;
        // select() on a listening socket (and a client one): a server waiting for work.
        let idle = c.classify(me, off_state::SLEEPING, select, (1 << lfd) | (1 << cfd));
        assert_eq!(idle.category, Category::Idle);
        assert_eq!(idle.target.as_deref(), Some(format!("tcp listen {addr}").as_str()));
        // On a connected socket only: network I/O.
        assert_eq!(c.classify(me, off_state::SLEEPING, select, 1 << cfd).category, Category::Net);
        // poll() records its first descriptor.
        let polled = c.classify(me, off_state::SLEEPING, libc::SYS_poll, poll_arg::FIRST_FD | cfd);
        assert_eq!((polled.category, polled.target), (Category::Net, Some(format!("tcp {addr}"))));
        // No descriptor: a timed sleep; descriptors not known: other.
        assert_eq!(c.classify(me, off_state::SLEEPING, libc::SYS_pselect6, 0).category, Category::Sleep);
        assert_eq!(c.classify(me, off_state::SLEEPING, libc::SYS_ppoll, 0).category, Category::Sleep);
        assert_eq!(c.classify(me, off_state::SLEEPING, select, poll_arg::UNKNOWN).category, Category::Other);
        // accept() on the listening socket is waiting for work too.
        assert_eq!(c.classify(me, off_state::SLEEPING, libc::SYS_accept4, lfd).category, Category::Idle);
    }

    #[test]
    fn loop_idle_marks_apply_to_every_interval_of_the_poll() {
        let mut c = Classifier::default();
        let me = std::process::id();
        let before = c.classify(me, off_state::SLEEPING, libc::SYS_epoll_wait, 9999);
        assert_ne!(before.category, Category::Idle);
        c.mark_loop_idle(me, libc::SYS_epoll_wait, 9999);
        let after = c.classify(me, off_state::SLEEPING, libc::SYS_epoll_wait, 9999);
        assert_eq!((after.category, after.target.as_deref()), (Category::Idle, Some(LOOP_IDLE_TARGET)));
        // Its run-queue part stays run-queue wait.
        assert_eq!(c.classify(me, off_state::RUNNABLE, libc::SYS_epoll_wait, 9999).category, Category::Runqueue);
    }
}
