//! On-CPU sampling end to end: real BPF programs, real processes.
use std::time::{Duration, Instant};

use integration_tests::*;

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn command_target_unwinds_frame_pointer_chain_and_ends_with_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let (json, folded, svg) = (dir.path().join("p.json"), dir.path().join("p.folded"), dir.path().join("p.svg"));
    let start = Instant::now();
    let out = run(
        pyebpf()
            .args(["profile", "--mode", "cpu", "-F", "499", "-o"])
            .arg(&json)
            .arg("-o")
            .arg(&folded)
            .arg("-o")
            .arg(&svg)
            .arg("--")
            .arg(spin_program())
            .arg("2"),
        TIMEOUT,
    );
    assert_success(&out);
    // Ends with the command (2 s), not at some default duration.
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("command exited (status 0)"), "summary: {stdout}");

    let profile = read_json(&json);
    assert_eq!(profile["format"], "pyebpf-profile");
    assert_eq!(profile["frequency_hz"], 499);
    let procs = profile["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "only the command is profiled: {procs:?}");
    let p = &procs[0];
    assert_eq!(p["comm"], "spin");
    let samples = p["samples"].as_u64().unwrap();
    // 2 s of one busy thread at 499 Hz is ~1000 samples; allow for a loaded machine.
    assert!(samples > 300, "too few samples: {samples}");
    let share = share_with_chain(p, &["main", "outer", "inner_spin"]);
    assert!(share > 0.9, "main → outer → inner_spin in only {:.0}% of samples", share * 100.0);

    // Folded: process;thread;frames count, root first.
    let pid = p["pid"].as_u64().unwrap();
    let text = std::fs::read_to_string(&folded).unwrap();
    let prefix = format!("spin ({pid});spin ({pid});");
    let mut folded_total = 0;
    for line in text.lines() {
        assert!(line.starts_with(&prefix), "bad folded line: {line}");
        let (_, count) = line.rsplit_once(' ').unwrap();
        folded_total += count.parse::<u64>().unwrap();
    }
    assert_eq!(folded_total, samples);
    assert!(text.contains(";main;outer;inner_spin "));

    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("inner_spin"));
}

#[test]
fn pid_target_reports_that_process_and_all_its_threads_only() {
    let target = KillOnDrop(start_spin(8.0, 2));
    let other = KillOnDrop(start_spin(8.0, 0));
    std::thread::sleep(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let out = run(
        pyebpf().args(["profile", "-d", "2", "-F", "199", "--pid", &target.pid().to_string(), "-o"]).arg(&json),
        TIMEOUT,
    );
    assert_success(&out);
    let profile = read_json(&json);
    let procs = profile["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1, "{procs:?}");
    assert_eq!(procs[0]["pid"], target.pid());
    assert!(process(&profile, other.pid()).is_none());
    let threads = procs[0]["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 3, "main thread and two workers: {threads:?}");
    let share = share_with_chain(&procs[0], &["thread_main", "outer", "inner_spin"]);
    assert!(share > 0.4, "worker chain in {:.0}% of samples", share * 100.0);
}

#[test]
fn all_sees_a_busy_process_it_was_not_told_about() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let child = spawn_sampling(pyebpf().args(["profile", "--all", "-d", "3", "-o"]).arg(&json));
    // Started after profiling began.
    std::thread::sleep(Duration::from_millis(200));
    let spin = KillOnDrop(start_spin(1.5, 0));
    let profiler_pid = child.id();
    let out = wait_output(child, TIMEOUT);
    assert_success(&out);
    let profile = read_json(&json);
    let p = process(&profile, spin.pid()).unwrap_or_else(|| panic!("spin {} not in --all profile", spin.pid()));
    assert!(p["samples"].as_u64().unwrap() > 50, "{p}");
    assert!(share_with_chain(p, &["main", "outer", "inner_spin"]) > 0.8);
    // The profiler does not profile itself.
    assert!(process(&profile, profiler_pid).is_none());
}

#[test]
fn pid_that_exits_during_profiling_keeps_its_samples() {
    // Long enough to outlive pyebpf's start on a busy machine (the BPF verifier).
    let spin = KillOnDrop(start_spin(4.0, 0));
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let start = Instant::now();
    let out = run(pyebpf().args(["profile", "-d", "30", "--pid", &spin.pid().to_string(), "-o"]).arg(&json), TIMEOUT);
    assert_success(&out);
    assert!(start.elapsed() < Duration::from_secs(15), "did not stop when the pid exited");
    let profile = read_json(&json);
    let p = process(&profile, spin.pid()).expect("samples of the exited process are kept");
    assert!(p["samples"].as_u64().unwrap() > 20);
    // Symbols were resolved although the process is gone by the time the profile is written.
    assert!(share_with_chain(p, &["main", "outer", "inner_spin"]) > 0.8);
}

fn interrupt_writes_complete_outputs(signal: i32) {
    let _spin = KillOnDrop(start_spin(10.0, 0));
    let dir = tempfile::tempdir().unwrap();
    let (json, svg) = (dir.path().join("p.json"), dir.path().join("p.svg"));
    let child = spawn_sampling(pyebpf().args(["profile", "--all", "-o"]).arg(&json).arg("-o").arg(&svg));
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let out = wait_output(child, TIMEOUT);
    assert_success(&out);
    let profile = read_json(&json);
    assert!(profile["samples"].as_u64().unwrap() > 0);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.trim_end().ends_with("</svg>"));
    // Nothing half-written is left beside the outputs.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn ctrl_c_writes_complete_outputs() {
    interrupt_writes_complete_outputs(libc::SIGINT);
}

#[test]
fn sigterm_writes_complete_outputs() {
    interrupt_writes_complete_outputs(libc::SIGTERM);
}

#[test]
fn kernel_frames_are_included_when_asked() {
    // A syscall-heavy loop: most of its CPU time is in the kernel.
    let src = r#"
#include <unistd.h>
#include <fcntl.h>
#include <time.h>
__attribute__((noinline)) void do_reads(int fd) { char buf[65536]; for (int i = 0; i < 1000; i++) read(fd, buf, sizeof buf); }
int main(void) { int fd = open("/dev/zero", O_RDONLY); time_t end = time(0) + 3; while (time(0) < end) do_reads(fd); return 0; }
"#;
    let bin = c_program("readloop", src);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let out = run(pyebpf().args(["profile", "--kernel", "-F", "499", "-o"]).arg(&json).arg("--").arg(&bin), TIMEOUT);
    assert_success(&out);
    let profile = read_json(&json);
    let p = &profile["processes"][0];
    let stacks = p["stacks"].as_array().unwrap();
    let total: u64 = stacks.iter().map(|s| s["samples"].as_u64().unwrap()).sum();
    let in_kernel: u64 = stacks
        .iter()
        .filter(|s| s["frames"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().starts_with("[kernel] ")))
        .map(|s| s["samples"].as_u64().unwrap())
        .sum();
    assert!(in_kernel as f64 > 0.3 * total as f64, "{in_kernel}/{total} samples with kernel frames");
    // Kernel frames sit on top of the user frames that made the syscall.
    let top = stacks
        .iter()
        .find(|s| s["frames"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().starts_with("[kernel] ")))
        .unwrap();
    let frames: Vec<&str> = top["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let first_kernel = frames.iter().position(|f| f.starts_with("[kernel] ")).unwrap();
    assert!(frames[first_kernel..].iter().all(|f| f.starts_with("[kernel] ")), "{frames:?}");
    // Frame-pointer unwinding from inside libc (built without frame pointers) can skip
    // do_reads, the caller of read(), but main stays below the kernel frames.
    assert!(frames[..first_kernel].contains(&"main"), "{frames:?}");

    // Without --kernel, no kernel frames.
    let json2 = dir.path().join("p2.json");
    let out = run(pyebpf().args(["profile", "-o"]).arg(&json2).arg("--").arg(&bin), TIMEOUT);
    assert_success(&out);
    let text = std::fs::read_to_string(&json2).unwrap();
    assert!(!text.contains("[kernel]"));
}

#[test]
fn summary_names_the_busiest_process_and_stack() {
    let out = run(pyebpf().args(["profile", "-F", "199", "--"]).arg(spin_program()).arg("1.5"), TIMEOUT);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("samples from 1 processes, 0 lost events"), "{stdout}");
    assert!(stdout.contains("inner_spin <- outer <- main"), "{stdout}");
}

#[test]
fn devices_and_stdout_are_written_in_place_not_replaced() {
    use std::os::unix::fs::FileTypeExt;
    // As root, renaming a finished file over /dev/null would replace the device for the whole
    // host: outputs that are devices or our own stdout are written in place.
    let out = run(
        pyebpf()
            .args(["profile", "--no-summary", "--format", "folded", "-o", "/dev/stdout", "-o", "/dev/null", "--"])
            .arg(spin_program())
            .arg("0.5"),
        TIMEOUT,
    );
    assert_success(&out);
    let null = std::fs::metadata("/dev/null").unwrap();
    assert!(null.file_type().is_char_device(), "/dev/null is no longer a device: {null:?}");
    let folded = String::from_utf8_lossy(&out.stdout);
    assert!(folded.lines().any(|l| l.starts_with("spin (") && l.contains(";inner_spin ")), "stdout: {folded}");
}

/// Is `pid` a kernel thread? (`Kthread:` in its status, Linux 6.4+; else a child of kthreadd.)
fn is_kernel_thread(pid: u64) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    match field("Kthread:") {
        Some(k) => k == "1",
        None => pid == 2 || field("PPid:") == Some("2"),
    }
}

#[test]
fn kernel_threads_show_their_kernel_stack_without_being_asked() {
    // Kernel threads have no user stack: without --kernel they used to be only "[no user
    // stack]". Writes synced in a loop keep writeback workers and the journal thread busy.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), dir.path().join("sync.dat"));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&[7u8; 1 << 16]).unwrap();
                f.sync_all().unwrap();
            }
        })
    };
    let out =
        run(pyebpf().args(["profile", "--all", "-F", "999", "-d", "3", "--no-summary", "-o"]).arg(&json), TIMEOUT);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_success(&out);
    let profile = read_json(&json);
    let (mut kernel_samples, mut with_kernel_stack) = (0u64, 0u64);
    let mut user_kernel_frames = Vec::new();
    for p in profile["processes"].as_array().unwrap() {
        let kthread = is_kernel_thread(p["pid"].as_u64().unwrap());
        for s in p["stacks"].as_array().unwrap().iter().filter(|s| s["category"] == "cpu") {
            let frames: Vec<&str> = s["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
            let samples = s["samples"].as_u64().unwrap();
            if kthread {
                kernel_samples += samples;
                if !frames.is_empty() && frames.iter().all(|f| f.starts_with("[kernel] ")) {
                    with_kernel_stack += samples;
                }
            } else if frames.iter().any(|f| f.starts_with("[kernel] ")) {
                user_kernel_frames.push(format!("{} ({}): {frames:?}", p["comm"], p["pid"]));
            }
        }
    }
    assert!(kernel_samples >= 5, "only {kernel_samples} samples of kernel threads");
    assert!(
        with_kernel_stack * 100 >= kernel_samples * 95,
        "{with_kernel_stack} of {kernel_samples} kernel-thread samples with their kernel stack"
    );
    // User processes keep user stacks only, as without --kernel before.
    assert!(user_kernel_frames.is_empty(), "kernel frames in user processes: {user_kernel_frames:?}");
}

#[test]
fn a_frame_pointer_into_data_ends_the_stack_with_a_marker_not_a_data_symbol() {
    // The spin loop runs with its frame pointer at a fake frame whose return address is inside
    // a data array (as when code built without frame pointers uses rbp for data): the stack
    // must end there, marked, and never be named after the array.
    let src = r#"
#include <stdlib.h>
#include <time.h>
unsigned long pyebpf_test_data_table[64] = {1};
static unsigned long fake_frame[2];
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
__attribute__((noinline)) void spin_with_bad_frame(double end) {
    fake_frame[0] = 0;
    fake_frame[1] = (unsigned long)&pyebpf_test_data_table[8];
    while (now() < end)
        __asm__ volatile("push %%rbp\n\tmov %0, %%rbp\n\tmov $20000000, %%rcx\n1:\tdec %%rcx\n\tjnz 1b\n\tpop %%rbp"
                         : : "r"(fake_frame) : "rcx", "memory");
}
int main(int argc, char **argv) { spin_with_bad_frame(now() + (argc > 1 ? atof(argv[1]) : 2.0)); return 0; }
"#;
    let bin = c_program("badframe", src);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("p.json");
    let out = run(pyebpf().args(["profile", "-F", "499", "-o"]).arg(&json).arg("--").arg(&bin).arg("2"), TIMEOUT);
    assert_success(&out);
    let profile = read_json(&json);
    let p = &profile["processes"][0];
    let (mut spinning, mut marked) = (0u64, 0u64);
    for s in p["stacks"].as_array().unwrap() {
        let frames: Vec<&str> = s["frames"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        assert!(!frames.iter().any(|f| f.contains("pyebpf_test_data_table")), "named after data: {frames:?}");
        if frames.last() == Some(&"spin_with_bad_frame") {
            spinning += s["samples"].as_u64().unwrap();
            if frames == ["[not code]", "spin_with_bad_frame"] {
                marked += s["samples"].as_u64().unwrap();
            }
        }
    }
    assert!(spinning > 200, "{spinning} samples in spin_with_bad_frame");
    assert!(marked * 100 >= spinning * 95, "{marked} of {spinning} samples end at [not code]");
}

#[test]
fn outputs_are_created_owner_only_and_existing_ones_keep_their_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (new, existing) = (dir.path().join("new.json"), dir.path().join("existing.svg"));
    std::fs::write(&existing, "old").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(
        pyebpf()
            .args(["profile", "--no-summary", "-o"])
            .arg(&new)
            .arg("-o")
            .arg(&existing)
            .arg("--")
            .arg(spin_program())
            .arg("0.3"),
        TIMEOUT,
    );
    assert_success(&out);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    // Profiles hold command lines and code paths: not for every user of the host.
    assert_eq!(mode(&new), 0o600, "new output");
    assert_eq!(mode(&existing), 0o644, "existing output");
    assert!(std::fs::read_to_string(&existing).unwrap().contains("</svg>"));
}
