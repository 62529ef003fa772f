//! The finished profile, typed: what every output format and the summary are made from, and
//! what `pyebpf diff` reads back. Nothing here knows where the data came from.
pub mod analysis;
pub mod category;
pub mod mode;
pub mod profile;

pub use category::{CATEGORIES, Category, Wait};
pub use mode::Mode;
pub use profile::{
    FunctionProfile, LoopStall, ProcessProfile, Profile, PythonFrameProfile, StackProfile, ThreadProfile,
};
