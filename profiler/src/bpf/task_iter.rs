//! The task iterator's userspace side: loading whichever build of it the kernel accepts, and
//! running it (each read of a fresh iterator file runs the program over every task).
use std::io::Read as _;

use aya::{Btf, Ebpf, programs::Iter};
use profiler_common::task_iter::{
    ITER_TARGET, PROG_TASK_THREADS, PROG_TASK_THREADS_NO_REGS, TaskRecord, TaskSchedOffsets,
};

use super::kernel_btf::KernelBtf;

/// The iterator program loaded.
pub struct TaskIter {
    program: &'static str,
}

impl TaskIter {
    /// Loads the iterator with `bpf_task_pt_regs` (5.15+), else the one without; None, with one
    /// warning, when the kernel takes neither (task iterators need 5.8, `bpf_get_task_stack`
    /// 5.9): threads blocked all along are then found from /proc, without kernel stacks.
    pub fn load(ebpf: &mut Ebpf) -> Option<Self> {
        let btf = match Btf::from_sys_fs() {
            Ok(btf) => btf,
            Err(e) => {
                log::warn!("no kernel BTF for the task iterator ({e}): blocked threads get no kernel stacks");
                return None;
            }
        };
        let mut last_error = String::new();
        for program in [PROG_TASK_THREADS, PROG_TASK_THREADS_NO_REGS] {
            let Some(prog) = ebpf.program_mut(program) else { continue };
            let Ok(iter) = <&mut Iter>::try_from(prog) else { continue };
            match iter.load(ITER_TARGET, &btf) {
                Ok(()) => {
                    log::debug!("task iterator: {program}");
                    return Some(Self { program });
                }
                Err(e) => last_error = super::error_chain(&e),
            }
        }
        log::warn!("the kernel refused the task iterator ({last_error}): blocked threads get no kernel stacks");
        None
    }

    /// One record per thread of the registered processes, now.
    pub fn run(&self, ebpf: &mut Ebpf) -> anyhow::Result<Vec<TaskRecord>> {
        let iter: &mut Iter =
            ebpf.program_mut(self.program).ok_or_else(|| anyhow::anyhow!("no iterator"))?.try_into()?;
        let link = iter.attach()?;
        let mut file = iter.take_link(link)?.into_file()?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(parse(&bytes))
    }
}

/// Records out of the iterator's output: whole records only.
pub fn parse(bytes: &[u8]) -> Vec<TaskRecord> {
    bytes
        .chunks_exact(size_of::<TaskRecord>())
        // SAFETY: TaskRecord is plain old data (integers, no padding); read unaligned.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<TaskRecord>()) })
        .collect()
}

/// Where the iterator reads a task's CPU state (`TaskSchedOffsets`), from the kernel's BTF.
/// Each part is all there or all 0: without `on_cpu` (a kernel built without SMP) running and
/// runnable threads are not told apart; without `sched_info` (no CONFIG_SCHED_INFO) or the
/// run queue behind `se.cfs_rq` (no CONFIG_FAIR_GROUP_SCHED), a runnable thread's wait so far
/// is not known. `dump` says which when it matters.
pub fn sched_offsets(btf: Option<&KernelBtf>) -> TaskSchedOffsets {
    let Some(btf) = btf else { return TaskSchedOffsets::default() };
    let mut o = TaskSchedOffsets::default();
    if let (Some(on_cpu), Some((cpu, _))) = (
        btf.offset_of("task_struct", &["on_cpu"]),
        btf.offset_of_any("task_struct", &[&["thread_info", "cpu"], &["cpu"]]),
    ) {
        (o.on_cpu, o.cpu) = (on_cpu, cpu);
    }
    if let Some(last_queued) = btf.offset_of("task_struct", &["sched_info", "last_queued"]) {
        o.last_queued = last_queued;
        if let (Some(se_cfs_rq), Some(cfs_rq_rq), Some(rq_clock)) = (
            btf.offset_of("task_struct", &["se", "cfs_rq"]),
            btf.offset_of("cfs_rq", &["rq"]),
            btf.offset_of("rq", &["clock"]),
        ) {
            (o.se_cfs_rq, o.cfs_rq_rq, o.rq_clock) = (se_cfs_rq, cfs_rq_rq, rq_clock);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every part is in this kernel (6.18, SMP, SCHED_INFO, FAIR_GROUP_SCHED), at plausible
    /// offsets: `cpu` in `thread_info` at the start of `task_struct`, the rest further in.
    #[test]
    fn finds_the_cpu_state_offsets_in_the_running_kernel() {
        let btf = KernelBtf::load().expect("/sys/kernel/btf/vmlinux");
        let o = sched_offsets(Some(&btf));
        assert!(o.cpu > 0 && o.cpu < 64 && o.cpu.is_multiple_of(4), "thread_info.cpu at {}", o.cpu);
        assert!(o.on_cpu > o.cpu && o.on_cpu < 256 && o.on_cpu.is_multiple_of(4), "on_cpu at {}", o.on_cpu);
        assert!(o.last_queued > o.on_cpu && o.last_queued.is_multiple_of(8), "last_queued at {}", o.last_queued);
        assert!(o.se_cfs_rq > o.on_cpu && o.se_cfs_rq.is_multiple_of(8), "se.cfs_rq at {}", o.se_cfs_rq);
        assert!(o.cfs_rq_rq > 0 && o.cfs_rq_rq.is_multiple_of(8), "cfs_rq.rq at {}", o.cfs_rq_rq);
        assert!(o.rq_clock > 0 && o.rq_clock.is_multiple_of(8), "rq.clock at {}", o.rq_clock);
        assert_eq!(sched_offsets(None), TaskSchedOffsets::default());
    }
}
