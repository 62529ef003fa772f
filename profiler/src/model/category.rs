//! Where wall-clock time goes: the categories of a thread's time, and a classified wait
//! (category, syscall, target). JSON and pprof use the categories' lowercase names.
use serde::{Deserialize, Serialize};

/// Where wall-clock time goes. The order is the order of reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Running on a CPU.
    Cpu,
    /// Runnable, waiting for a CPU (preempted, or woken and not yet running).
    Runqueue,
    /// Blocked on a socket.
    Net,
    /// Blocked on a file or block device, or in uninterruptible sleep.
    Disk,
    /// Blocked on a futex that is not the GIL (locks, conditions, queues).
    Lock,
    /// Waiting to take the GIL.
    Gil,
    /// Sleeping (time.sleep, timed waits with no descriptor).
    Sleep,
    /// Pipes, child processes, event descriptors.
    Ipc,
    /// Waiting for work: an event loop with nothing to run, a server waiting for connections.
    /// Not I/O-bound time: the thread had nothing to do.
    Idle,
    /// Anything else, named by its syscall.
    Other,
}

pub const CATEGORIES: [Category; 10] = [
    Category::Cpu,
    Category::Runqueue,
    Category::Net,
    Category::Disk,
    Category::Lock,
    Category::Gil,
    Category::Sleep,
    Category::Ipc,
    Category::Idle,
    Category::Other,
];

impl Category {
    /// The category a name (as in JSON and pprof) stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        CATEGORIES.iter().copied().find(|c| c.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Runqueue => "runqueue",
            Self::Net => "net",
            Self::Disk => "disk",
            Self::Lock => "lock",
            Self::Gil => "gil",
            Self::Sleep => "sleep",
            Self::Ipc => "ipc",
            Self::Idle => "idle",
            Self::Other => "other",
        }
    }
}

/// A classified wait: category, syscall name and what it waited on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Wait {
    pub category: Category,
    pub syscall: Option<String>,
    pub target: Option<String>,
}

impl Wait {
    /// The run-queue part of an off-CPU interval, after the wakeup from `blocked`: runnable,
    /// waiting for a CPU, still in the same syscall.
    pub fn runqueue_after(blocked: &Wait) -> Wait {
        Wait { category: Category::Runqueue, syscall: blocked.syscall.clone(), target: None }
    }

    /// A thread preempted outside a syscall, waiting for a CPU.
    pub fn preempted() -> Wait {
        Wait { category: Category::Runqueue, syscall: None, target: Some("preempted".into()) }
    }

    /// `[net] recv tcp 127.0.0.1:5432`: the synthetic leaf frame of wall-clock stacks.
    pub fn leaf_frame(&self) -> String {
        let mut s = format!("[{}]", self.category.name());
        for part in [&self.syscall, &self.target].into_iter().flatten() {
            s.push(' ');
            s.push_str(part);
        }
        s
    }
}
