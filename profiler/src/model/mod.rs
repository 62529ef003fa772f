//! The finished profile, typed: what every output format and the summary are made from, and
//! what `pyebpf diff` reads back. Nothing here knows where the data came from.
//!
//! - [`profile`]: the profile, its processes, threads, stacks and functions (and their JSON).
//! - [`frame`]: a stack's frames: Python, native, kernel, markers, the wait leaf.
//! - [`category`]: where time goes, and a classified wait.
//! - [`totals`]: time per category.
//! - [`analysis`]: function tables and event-loop stalls computed from stacks.
//! - [`folded`]: the folded-stack text form.
//! - [`dump`]: `pyebpf dump`'s view of threads at one moment.
pub mod analysis;
pub mod category;
pub mod dump;
pub mod folded;
pub mod frame;
pub mod mode;
pub mod profile;
pub mod tasks;
pub mod totals;

pub use category::{CATEGORIES, Category, Wait};
pub use frame::{Frame, Marker, NativeFrame, PythonFrame};
pub use mode::Mode;
pub use profile::{
    Container, FunctionProfile, LoopStall, ProcessProfile, Profile, ProgramStats, StackProfile, ThreadProfile,
};
pub use tasks::TaskProfile;
pub use totals::Totals;
