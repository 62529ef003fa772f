//! A profiling session: loads the kernel programs ([`crate::bpf`]), drains their events,
//! accumulates stacks and turns each window into a [`crate::model::Profile`].
//!
//! - [`session`]: the pipeline's driver (start, tick, snapshot, rotate).
//! - [`events`]: ring-buffer records decoded into typed events.
//! - [`exits`]: threads and processes that exited in the window (kernel events, a /proc
//!   rescan as safety net).
//! - [`aggregate`]: samples and waits accumulated as raw stacks while profiling.
//! - [`phase_cost`]: the session's own CPU per part of its work (debug log).
//! - [`repeats`]: off-CPU events that repeat one worked out before in the window.
//! - [`blocked`]: stacks of waits still going on at a snapshot (threads blocked all along).
//! - [`dump`]: every thread of a process now, for `pyebpf dump`.
//! - [`dump_native`]: its threads' native stacks, merged with their Python frames (`--native`).
//! - [`totals`]: exact per-thread time per category from the kernel's cumulative maps.
//! - [`build`]: raw stacks and exact totals turned into the model (through [`build::Lookups`],
//!   so it is tested without a live system).
//! - [`target`]: what is profiled: the host, pids, or a command started for the profile.
//! - [`tree`]: the targets' descendants, followed as they fork.
//! - [`launch`]: the command started for the profile, and ending everything it started.
//! - [`tasks`]: asyncio task snapshots within a CPU budget, weighed as wall time.
//! - [`window`]: window profiles merged into longer spans, and the daemon's ring of them.
pub mod aggregate;
pub mod blocked;
pub mod build;
pub mod dump;
pub mod dump_native;
pub mod events;
pub mod exits;
pub mod launch;
pub mod phase_cost;
pub mod repeats;
pub mod session;
pub mod target;
pub mod tasks;
pub mod totals;
pub mod tree;
pub mod window;
