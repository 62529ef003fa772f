//! The task iterator's userspace side: loading whichever build of it the kernel accepts, and
//! running it (each read of a fresh iterator file runs the program over every task).
use std::io::Read as _;

use aya::{Btf, Ebpf, programs::Iter};
use profiler_common::task_iter::{ITER_TARGET, PROG_TASK_THREADS, PROG_TASK_THREADS_NO_REGS, TaskRecord};

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
