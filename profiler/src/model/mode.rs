//! What a profile's stacks weigh.

/// What stacks weigh in flame graphs and folded output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Cpu,
    Wall,
}
