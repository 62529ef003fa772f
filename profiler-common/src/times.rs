//! Arithmetic on a thread's [`ThreadTimes`] that the kernel does as it happens and userspace
//! does again for what has not happened yet (an interval still open when a window is cut, a
//! thread already asleep when tracking starts): one definition, so the two cannot disagree.
use crate::{OFFCPU_STACK_BURST, ThreadTimes, off_state};

/// Splits the off-CPU interval that started at `off_since_ns` (switched out in `off_state`,
/// woken at `wake_ns`, 0 if not yet) and ends at `now` into (blocked, run-queue wait).
///
/// A thread switched out runnable (preempted) only waited for a CPU. Otherwise it was blocked
/// until its wakeup and runnable after it; a wakeup outside the interval (none yet, or a stale
/// one) means it was blocked throughout. The two parts always add up to the interval.
#[inline(always)]
pub fn split_off_interval(off_state: u32, off_since_ns: u64, wake_ns: u64, now: u64) -> (u64, u64) {
    let off = now.saturating_sub(off_since_ns);
    if off_state == off_state::RUNNABLE {
        (0, off)
    } else if wake_ns >= off_since_ns && wake_ns <= now {
        (wake_ns - off_since_ns, now - wake_ns)
    } else {
        (off, 0)
    }
}

impl ThreadTimes {
    /// The entry of thread of process `pid` first seen at `now`: no time yet, and a full
    /// off-CPU stack budget (see [`ThreadTimes::take_stack_credit`]).
    #[inline(always)]
    pub const fn new(pid: u32, stack_cost_ns: u64, now: u64) -> Self {
        ThreadTimes {
            oncpu_ns: 0,
            on_since_ns: 0,
            off_since_ns: 0,
            wake_ns: 0,
            off_state: off_state::RUNNABLE,
            pid,
            stack_credit_ns: stack_cost_ns.saturating_mul(OFFCPU_STACK_BURST),
            credit_at_ns: now,
            stacks_sampled_out: 0,
        }
    }

    /// Time on a CPU up to `now`, counting the interval in progress if the thread is running.
    #[inline(always)]
    pub const fn oncpu_ns_at(&self, now: u64) -> u64 {
        if self.on_since_ns != 0 {
            self.oncpu_ns.saturating_add(now.saturating_sub(self.on_since_ns))
        } else {
            self.oncpu_ns
        }
    }

    /// Takes one off-CPU stack from the thread's budget, if it has one left; counts it in
    /// `stacks_sampled_out` if not. The budget is a token bucket in nanoseconds of credit: each
    /// stack costs `stack_cost_ns` (`1e9 / --off-cpu-stack-rate`; 0 = unlimited), credit accrues
    /// one nanosecond per nanosecond, and at most [`OFFCPU_STACK_BURST`] stacks' worth is kept.
    ///
    /// Why a budget: unwinding a deep Python stack costs microseconds and ~5 KiB of ring buffer,
    /// and a thread that blocks thousands of times a second (GIL hand-offs in a busy threaded
    /// server) would pay that each time. Its time is summed exactly anyway; userspace spreads
    /// what the kept stacks miss over them.
    #[inline(always)]
    pub fn take_stack_credit(&mut self, stack_cost_ns: u64, now: u64) -> bool {
        if stack_cost_ns == 0 {
            return true;
        }
        let cap = stack_cost_ns.saturating_mul(OFFCPU_STACK_BURST);
        let credit = self.stack_credit_ns.saturating_add(now.saturating_sub(self.credit_at_ns));
        self.credit_at_ns = now;
        if credit >= stack_cost_ns {
            self.stack_credit_ns = if credit > cap { cap } else { credit } - stack_cost_ns;
            true
        } else {
            self.stack_credit_ns = credit;
            self.stacks_sampled_out += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000_000_000;

    #[test]
    fn preempted_intervals_are_all_run_queue_wait() {
        assert_eq!(split_off_interval(off_state::RUNNABLE, T0, 0, T0 + 300), (0, 300));
        // A wakeup does not matter to a runnable thread.
        assert_eq!(split_off_interval(off_state::RUNNABLE, T0, T0 + 100, T0 + 300), (0, 300));
    }

    #[test]
    fn blocked_intervals_split_at_the_wakeup() {
        for state in [off_state::SLEEPING, off_state::UNINTERRUPTIBLE] {
            assert_eq!(split_off_interval(state, T0, T0 + 100, T0 + 300), (100, 200));
            // Woken at the switch-out or at the switch-in.
            assert_eq!(split_off_interval(state, T0, T0, T0 + 300), (0, 300));
            assert_eq!(split_off_interval(state, T0, T0 + 300, T0 + 300), (300, 0));
            // Not woken yet (an interval still open), or a wakeup outside the interval.
            assert_eq!(split_off_interval(state, T0, 0, T0 + 300), (300, 0));
            assert_eq!(split_off_interval(state, T0, T0 - 5, T0 + 300), (300, 0));
            assert_eq!(split_off_interval(state, T0, T0 + 400, T0 + 300), (300, 0));
            // `now` before the switch-out (a reading taken just before it): nothing.
            assert_eq!(split_off_interval(state, T0, 0, T0 - 1), (0, 0));
        }
    }

    #[test]
    fn the_parts_add_up_to_the_interval() {
        for state in [off_state::RUNNABLE, off_state::SLEEPING, off_state::UNINTERRUPTIBLE] {
            for wake in [0, T0 - 1, T0, T0 + 1, T0 + 50, T0 + 99, T0 + 100, T0 + 101] {
                let (blocked, runq) = split_off_interval(state, T0, wake, T0 + 100);
                assert_eq!(blocked + runq, 100, "state {state} wake {wake}");
            }
        }
    }

    #[test]
    fn on_cpu_time_counts_the_running_interval() {
        let mut t = ThreadTimes::new(1, 0, T0);
        t.oncpu_ns = 500;
        assert_eq!(t.oncpu_ns_at(T0 + 1000), 500, "not running");
        t.on_since_ns = T0;
        assert_eq!(t.oncpu_ns_at(T0 + 1000), 1500);
        assert_eq!(t.oncpu_ns_at(T0 - 1), 500, "a reading older than the switch-in");
    }

    #[test]
    fn a_new_thread_may_take_a_burst_of_stacks_then_the_rate() {
        let cost = 20_000_000; // 50 stacks/s
        let mut t = ThreadTimes::new(7, cost, T0);
        assert_eq!((t.pid, t.credit_at_ns), (7, T0));
        for i in 0..OFFCPU_STACK_BURST {
            assert!(t.take_stack_credit(cost, T0), "stack {i} of the burst");
        }
        assert!(!t.take_stack_credit(cost, T0));
        assert_eq!(t.stacks_sampled_out, 1);
        // One stack's worth of time later, one more.
        assert!(!t.take_stack_credit(cost, T0 + cost - 1));
        assert!(t.take_stack_credit(cost, T0 + cost));
        assert!(!t.take_stack_credit(cost, T0 + cost));
        assert_eq!(t.stacks_sampled_out, 3);
    }

    #[test]
    fn credit_is_capped_at_the_burst() {
        let cost = 1_000;
        let mut t = ThreadTimes::new(1, cost, T0);
        t.stack_credit_ns = 0;
        // A long quiet spell gives back the burst, not more.
        let later = T0 + 1_000_000 * cost;
        let taken = (0..100).take_while(|_| t.take_stack_credit(cost, later)).count();
        assert_eq!(taken as u64, OFFCPU_STACK_BURST);
    }

    #[test]
    fn no_cost_is_no_limit() {
        let mut t = ThreadTimes::new(1, 0, T0);
        assert_eq!(t.stack_credit_ns, 0);
        assert!((0..1000).all(|_| t.take_stack_credit(0, T0)));
        assert_eq!((t.stacks_sampled_out, t.credit_at_ns), (0, T0));
    }
}
