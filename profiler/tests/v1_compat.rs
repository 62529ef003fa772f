//! Profiles written by pyebpf before the typed model (format version 1) read back into the
//! model and are written again unchanged: the JSON byte for byte, the folded stacks line for
//! line. The fixture is a real profile (Python, native and kernel frames, off-CPU waits with
//! targets, an event-loop stall) written by the binary of commit 0297447.
use profiler::model::Profile;

const FIXTURE_JSON: &str = include_str!("fixtures/profile-v1.json");
const FIXTURE_FOLDED: &str = include_str!("fixtures/profile-v1.folded");

#[test]
fn version_1_json_round_trips_byte_for_byte() {
    let profile: Profile = serde_json::from_str(FIXTURE_JSON).expect("a version-1 profile");
    let mut again = serde_json::to_string_pretty(&profile).unwrap();
    again.push('\n');
    assert!(again == FIXTURE_JSON, "the JSON written again differs from the version-1 file");
}

#[test]
fn version_1_folded_stacks_are_rendered_the_same_from_the_model() {
    let profile: Profile = serde_json::from_str(FIXTURE_JSON).unwrap();
    let lines: Vec<String> = FIXTURE_FOLDED.lines().map(str::to_string).collect();
    assert_eq!(profile.folded_lines(), lines);
}
