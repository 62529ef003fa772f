//! `cargo xtask test-kernels`: the BPF programs and a core subset of the integration tests on
//! the kernels production hosts run (Debian's 5.10, 6.1 and 6.12), each booted under qemu.
//!
//! - **Kernels** are Debian's generic `linux-image-*-amd64-unsigned` packages (the `-cloud`
//!   builds lack 9p), fetched with `apt-get download` through a private sources list and apt
//!   state under `target/kernels/apt`: nothing is installed on the host. The newest ABI of each
//!   series is taken and cached under `target/kernels/debs`; `--refresh` looks again.
//! - **Boot**: qemu with software emulation (TCG: this machine's KVM cannot run guests; one
//!   host thread for both vCPUs on qemu before 8.1, see `tcg.rs`), the
//!   package's own vmlinuz, and an initramfs made here: busybox (Debian's static build), the 9p,
//!   virtio and overlay modules out of the same package (with their dependencies, from its
//!   `modules.dep`, decompressed), and an init that mounts the host's root read-only over 9p
//!   under a tmpfs overlay (so tests may write anywhere; the host is never written), mounts a
//!   writable 9p share for results, and runs `guest.sh` there in a chroot.
//! - **Why not virtme-ng**: it does the same with the host's own kernel modules in mind; a
//!   distribution kernel that is not installed needs its modules found and loaded anyway, and
//!   `vng` exits 255 whatever the guest does. Plain qemu and a 60-line init keep the whole path
//!   in this file, with no PyPI dependency in the loop.
//! - **In the guest**: a `pyebpf profile --all` smoke run, then the chosen integration tests
//!   (built on the host, run from the shared tree) with one or two interpreters
//!   (`PYEBPF_TEST_PYTHONS`): TCG is 10-30 times slower than the host.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{setup::apt_install, tcg, util};

/// (series, Debian suite that ships it): Debian 11 / Amazon Linux 2, Debian 12 / AL2023, Debian 13.
pub const KERNELS: [(&str, &str); 3] = [("5.10", "bullseye"), ("6.1", "bookworm"), ("6.12", "trixie")];

/// Modules the init needs, loaded with their dependencies (those built in are skipped).
const MODULES: [&str; 5] = ["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_net"];

/// Integration tests run in each guest: (test binary, test names).
/// The `kernel_core_*` tests (tests/tests/kernels.rs): native and Python stacks and off-CPU
/// categories of commands pyebpf starts, so they begin once it samples. The other integration
/// tests start workloads first and bound their start-up, which emulation (a minute for the
/// verifier alone) does not meet.
pub const GUEST_TESTS: [(&str, &[&str]); 2] = [
    (
        "kernels",
        &[
            "kernel_core_native_frame_pointer_chain",
            "kernel_core_python_chain_and_thread_names",
            "kernel_core_off_cpu_categories_with_targets",
            "kernel_core_dump_running_and_runnable",
        ],
    ),
    // Wait targets read from the kernel's own structs, at offsets each kernel's BTF gives.
    ("wait_targets", &["per_request_files_and_connections_are_named"]),
];

/// Interpreters the guest tests use (`PYEBPF_TEST_PYTHONS`): the oldest (threads keyed by
/// pthread_t through the fs base) and a 3.11+ one (keyed by tid).
const GUEST_PYTHONS: &str = "3.8,3.13";

/// One guest run's time budget: boot, load and tests under emulation.
const GUEST_TIMEOUT: Duration = Duration::from_secs(40 * 60);

pub struct Options {
    pub only: Vec<String>,
    /// Only the smoke profile, no integration tests (a quick check that the programs load).
    pub smoke_only: bool,
    /// Run this shell script in the guest instead (debugging; its results directory is
    /// `$R`, the host's `target/kernels/results/<release>/`).
    pub script: Option<PathBuf>,
    pub refresh: bool,
    pub smp: u32,
    pub memory_mib: u32,
    /// TCG threading asked for (`None`: chosen from qemu's version, `tcg::choose`).
    pub tcg_thread: Option<tcg::Threading>,
}

struct KernelFiles {
    /// `uname -r` of the package, e.g. 5.10.0-46-amd64.
    release: String,
    package: String,
    vmlinuz: PathBuf,
    /// Decompressed modules, in load order.
    modules: Vec<PathBuf>,
}

struct Outcome {
    release: String,
    package: String,
    secs: f64,
    boot_secs: Option<f64>,
    passed: Vec<String>,
    failed: Vec<String>,
    error: Option<String>,
}

pub fn run(root: &Path, bin: &Path, opts: &Options) -> anyhow::Result<()> {
    util::require_root("qemu's 9p export of / and the guest's BPF tests need root")?;
    ensure_host_tools()?;
    let dir = target_dir(root).join("kernels");
    std::fs::create_dir_all(&dir)?;
    // The guests run copies: a rebuild on the host while they run must not change what they run.
    let bin_dir = dir.join("bin");
    let _ = std::fs::remove_dir_all(&bin_dir);
    std::fs::create_dir_all(&bin_dir)?;
    let copy = |from: &Path| -> anyhow::Result<PathBuf> {
        let to = bin_dir.join(from.file_name().context("a file name")?);
        std::fs::copy(from, &to).with_context(|| format!("copy {}", from.display()))?;
        Ok(to)
    };
    let bin = &copy(bin)?;
    let tests = build_guest_tests(root)?
        .into_iter()
        .map(|(name, exe)| Ok((name, copy(&exe)?)))
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let busybox = Path::new("/bin/busybox");
    let qemu = util::output("qemu-system-x86_64", &["--version"]).unwrap_or_default();
    let (threading, why) = tcg::choose(opts.tcg_thread, tcg::qemu_version(&qemu));
    let accel = tcg::accel(threading);
    eprintln!("xtask: qemu -accel {accel}: {why}");
    let mut outcomes = Vec::new();
    for (series, suite) in KERNELS {
        if !opts.only.is_empty() && !opts.only.iter().any(|o| o == series) {
            continue;
        }
        let start = Instant::now();
        let files = fetch_kernel(&dir, series, suite, opts.refresh)
            .with_context(|| format!("cannot get Debian's {series} kernel ({suite})"))?;
        let initrd = dir.join(format!("initrd-{}.cpio", files.release));
        write_initramfs(&initrd, busybox, &files.modules)?;
        let results = dir.join("results").join(&files.release);
        let _ = std::fs::remove_dir_all(&results);
        std::fs::create_dir_all(&results)?;
        let run: BTreeMap<String, PathBuf> = if opts.smoke_only { BTreeMap::new() } else { tests.clone() };
        match &opts.script {
            Some(script) => {
                let text = std::fs::read_to_string(script).with_context(|| format!("read {}", script.display()))?;
                let setup = guest_script(root, bin, &BTreeMap::new());
                let head = setup.split("echo \"PYEBPF-GUEST: smoke profile\"").next().unwrap_or_default();
                std::fs::write(
                    results.join("guest.sh"),
                    format!("{head}{text}\necho done > $R/finished\nsync\necho o > /proc/sysrq-trigger\nsleep 30\n"),
                )?
            }
            None => std::fs::write(results.join("guest.sh"), guest_script(root, bin, &run))?,
        }
        eprintln!("xtask: booting {} under qemu (TCG)", files.package);
        let error = boot(&files, &initrd, &results, opts, accel).err().map(|e| format!("{e:#}"));
        let mut outcome = read_results(&results, &files, start.elapsed().as_secs_f64(), opts.smoke_only);
        outcome.error = outcome.error.or(error);
        print_outcome(&outcome, &results);
        outcomes.push(outcome);
    }
    println!("\n{:<28} {:>9} {:>7} {:>7}  result", "kernel", "time", "boot", "tests");
    for o in &outcomes {
        println!(
            "{:<28} {:>8.0}s {:>6} {:>3}/{:<3}  {}",
            o.release,
            o.secs,
            o.boot_secs.map_or("-".into(), |b| format!("{b:.0}s")),
            o.passed.len(),
            o.passed.len() + o.failed.len(),
            if o.failed.is_empty() && o.error.is_none() { "ok" } else { "FAILED" }
        );
    }
    let bad: Vec<&str> =
        outcomes.iter().filter(|o| !o.failed.is_empty() || o.error.is_some()).map(|o| o.release.as_str()).collect();
    let tests_total = outcomes.iter().map(|o| o.passed.len() + o.failed.len()).sum::<usize>();
    let tests_failed = outcomes.iter().map(|o| o.failed.len()).sum::<usize>();
    println!("kernel tests: {} passed, {} failed", tests_total - tests_failed, tests_failed);
    if !bad.is_empty() {
        bail!("failed on {}", bad.join(", "));
    }
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

fn ensure_host_tools() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for (tool, package) in [
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/bin/busybox", "busybox-static"),
        ("/usr/bin/xz", "xz-utils"),
        ("/usr/bin/zstd", "zstd"),
    ] {
        if !Path::new(tool).exists() {
            missing.push(package);
        }
    }
    // A dynamically linked busybox would need its libc in the initramfs.
    if Path::new("/bin/busybox").exists()
        && util::output("file", &["-L", "/bin/busybox"]).is_some_and(|f| f.contains("dynamically linked"))
    {
        missing.push("busybox-static");
    }
    if !missing.is_empty() {
        eprintln!("xtask: installing {} from Debian for test-kernels", missing.join(" "));
        apt_install(&missing)?;
    }
    Ok(())
}

/// Builds the integration tests the guests run; returns test name → executable.
fn build_guest_tests(root: &Path) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut args = vec!["test", "--release", "--no-run", "--message-format=json", "-p", "integration-tests"];
    for (test, _) in GUEST_TESTS {
        args.extend(["--test", test]);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args(&args)
        .env("PATH", util::path_with_cargo_bin())
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["kind"][0] == "test"
            && let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    for (test, _) in GUEST_TESTS {
        if !found.contains_key(test) {
            bail!("cargo did not report the {test} test executable");
        }
    }
    Ok(found)
}

/// apt with a private sources list and state: downloads only, never installs.
fn apt(dir: &Path, args: &[&str]) -> Command {
    let apt_dir = dir.join("apt");
    let mut cmd = Command::new(args[0]);
    for opt in [
        format!("Dir::Etc::sourcelist={}", apt_dir.join("sources.list").display()),
        "Dir::Etc::sourceparts=-".into(),
        format!("Dir::State::lists={}", apt_dir.join("lists").display()),
        format!("Dir::Cache={}", apt_dir.join("cache").display()),
        "APT::Get::List-Cleanup=0".into(),
        // Files land in root-owned target/: apt's unprivileged download user cannot write there.
        "APT::Sandbox::User=root".into(),
    ] {
        cmd.args(["-o", &opt]);
    }
    cmd.args(&args[1..]).env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn apt_update(dir: &Path) -> anyhow::Result<()> {
    let apt_dir = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt_dir.join(sub))?;
    }
    let mut sources = String::new();
    for (_, suite) in KERNELS {
        for (archive, dist) in [("debian", suite.to_string()), ("debian-security", format!("{suite}-security"))] {
            writeln!(
                sources,
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/{archive} {dist} main"
            )?;
        }
    }
    std::fs::write(apt_dir.join("sources.list"), sources)?;
    eprintln!("xtask: reading Debian's package lists for the kernels (private apt state in {})", apt_dir.display());
    util::run(apt(dir, &["apt-get", "update", "-qq"]).stdout(Stdio::null()))
}

/// Numbers in a package name, for picking the newest ABI (5.10.0-46 after 5.10.0-45).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// `linux-image-5.10.0-46-amd64-unsigned` (Debian ≤ 12), `linux-image-6.12.118+deb13-amd64-unsigned` (13).
fn is_generic_image(name: &str, series: &str) -> bool {
    name.strip_prefix("linux-image-")
        .and_then(|rest| rest.strip_prefix(series))
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.strip_suffix("-amd64-unsigned"))
        .is_some_and(|abi| {
            abi.starts_with(|c: char| c.is_ascii_digit()) && !abi.contains("cloud") && !abi.contains("rt")
        })
}

fn fetch_kernel(dir: &Path, series: &str, suite: &str, refresh: bool) -> anyhow::Result<KernelFiles> {
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let cached = || -> Option<PathBuf> {
        std::fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "deb")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.split('_').next())
                        .is_some_and(|pkg| is_generic_image(pkg, series))
            })
            .max_by_key(|p| version_key(&p.file_name().unwrap().to_string_lossy()))
    };
    let deb = match cached().filter(|_| !refresh) {
        Some(deb) => deb,
        None => {
            apt_update(dir)?;
            let out = apt(dir, &["apt-cache", "search", "--names-only", &format!("^linux-image-{series}\\.")])
                .output()
                .context("apt-cache search")?;
            let name = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| is_generic_image(n, series))
                .max_by_key(|n| version_key(n))
                .map(str::to_string)
                .with_context(|| format!("no linux-image-{series}.*-amd64-unsigned package in {suite}"))?;
            eprintln!("xtask: downloading {name}");
            util::run(apt(dir, &["apt-get", "download", "-qq", &name]).current_dir(&debs))?;
            cached().context("apt-get download left no .deb")?
        }
    };
    let package = deb.file_name().unwrap().to_string_lossy().into_owned();
    let tree = dir.join("tree").join(package.trim_end_matches(".deb"));
    let order_file = tree.join("modules.order");
    if !order_file.exists() {
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(&tree)?;
        extract(&deb, &tree, &["./boot/vmlinuz-*"])?;
        let order = resolve_modules(&deb, &tree)?;
        std::fs::write(&order_file, order.join("\n"))?;
    }
    let vmlinuz = std::fs::read_dir(tree.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("no boot/vmlinuz-* in the package")?;
    let release = vmlinuz.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    let modules =
        std::fs::read_to_string(&order_file)?.lines().filter(|l| !l.is_empty()).map(|l| tree.join(l)).collect();
    Ok(KernelFiles { release, package, vmlinuz, modules })
}

/// Extracts [`MODULES`] and what they depend on from the package, decompressed; returns their
/// paths (relative to `tree`) in load order. The package has no `modules.dep` (depmod makes it
/// at install time), so dependencies come from each module's own `.modinfo` `depends=`.
fn resolve_modules(deb: &Path, tree: &Path) -> anyhow::Result<Vec<String>> {
    let listing = Command::new("dpkg-deb").arg("-c").arg(deb).output().context("dpkg-deb -c")?;
    // module name (dashes as underscores) → path in the archive
    let mut in_package: BTreeMap<String, String> = BTreeMap::new();
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        let Some(path) = line.split_whitespace().last() else { continue };
        if path.contains("/modules/")
            && (path.ends_with(".ko") || path.ends_with(".ko.xz") || path.ends_with(".ko.zst"))
        {
            in_package.insert(module_name(path), path.to_string());
        }
    }
    let mut depends: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut wanted: Vec<String> = MODULES.iter().map(|m| m.to_string()).collect();
    while !wanted.is_empty() {
        // Those not in the package are built into the kernel.
        let mut round: Vec<String> = std::mem::take(&mut wanted)
            .into_iter()
            .filter(|m| in_package.contains_key(m) && !depends.contains_key(m))
            .collect();
        round.sort();
        round.dedup();
        if round.is_empty() {
            break;
        }
        let members: Vec<&str> = round.iter().map(|m| in_package[m].as_str()).collect();
        extract(deb, tree, &members)?;
        for m in &round {
            let plain = decompressed(&tree.join(&in_package[m]))?;
            let deps = modinfo_depends(&std::fs::read(&plain)?)
                .with_context(|| format!("no .modinfo in {}", plain.display()))?;
            wanted.extend(deps.iter().cloned());
            depends.insert(m.clone(), deps);
        }
    }
    let mut order = Vec::new();
    for m in MODULES {
        load_after_dependencies(m, &depends, &mut order, 0)?;
    }
    Ok(order
        .iter()
        .map(|m| {
            let packed = in_package[m].trim_start_matches("./");
            packed.trim_end_matches(".xz").trim_end_matches(".zst").to_string()
        })
        .collect())
}

/// `9p` for `./lib/modules/5.10.0-46-amd64/kernel/fs/9p/9p.ko`; dashes become underscores,
/// as the kernel compares module names.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The `depends=` list of a module's `.modinfo` section (NUL-separated `key=value` strings).
fn modinfo_depends(elf: &[u8]) -> Option<Vec<String>> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(elf).ok()?;
    let modinfo = file.section_by_name(".modinfo")?.data().ok()?;
    let deps = modinfo
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .map(|list| String::from_utf8_lossy(list).split(',').filter(|d| !d.is_empty()).map(module_name).collect())
        .unwrap_or_default();
    Some(deps)
}

/// Appends `name` to `order` after what it depends on (built-in modules have no entry).
fn load_after_dependencies(
    name: &str,
    depends: &BTreeMap<String, Vec<String>>,
    order: &mut Vec<String>,
    depth: u32,
) -> anyhow::Result<()> {
    let Some(deps) = depends.get(name) else { return Ok(()) };
    if depth > 32 {
        bail!("module dependency cycle at {name}");
    }
    for dep in deps {
        load_after_dependencies(dep, depends, order, depth + 1)?;
    }
    if !order.iter().any(|m| m == name) {
        order.push(name.to_string());
    }
    Ok(())
}

/// Extracts the members matching `patterns` from a .deb's data archive.
fn extract(deb: &Path, into: &Path, patterns: &[&str]) -> anyhow::Result<()> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("run dpkg-deb")?;
    let status = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .arg("--wildcards")
        .args(patterns)
        .stdin(dpkg.stdout.take().unwrap())
        .status()
        .context("run tar")?;
    let dpkg_status = dpkg.wait()?;
    if !status.success() || !dpkg_status.success() {
        bail!("cannot extract {patterns:?} from {}", deb.display());
    }
    Ok(())
}

/// The module as a plain .ko (busybox's insmod does not decompress), next to the packed one.
fn decompressed(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path.to_string_lossy();
    let (tool, plain) = if let Some(p) = name.strip_suffix(".xz") {
        ("xz", p)
    } else if let Some(p) = name.strip_suffix(".zst") {
        ("zstd", p)
    } else {
        return Ok(path.to_path_buf());
    };
    let plain = PathBuf::from(plain);
    if !plain.exists() {
        let out = Command::new(tool).arg("-dc").arg(path).output().with_context(|| format!("run {tool}"))?;
        if !out.status.success() {
            bail!("{tool} -d {} failed", path.display());
        }
        std::fs::write(&plain, out.stdout)?;
    }
    Ok(plain)
}

/// The guest's /init: modules, the host root under an overlay, results share, then guest.sh.
fn init_script(modules: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin\n\
         /bin/busybox --install -s\n\
         mount -t proc proc /proc\nmount -t sysfs sysfs /sys\nmount -t devtmpfs devtmpfs /dev\n\
         fail() { echo \"PYEBPF-GUEST: $*\"; echo o > /proc/sysrq-trigger; sleep 30; }\n\
         echo \"PYEBPF-GUEST: booted $(cut -d' ' -f1 /proc/uptime)\"\n",
    );
    for m in modules {
        writeln!(s, "insmod /modules/{m} || fail 'insmod {m} failed'").unwrap();
    }
    s.push_str(
        "mkdir -p /lower /upper /newroot\n\
         mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /lower || fail 'cannot mount the host root over 9p'\n\
         mount -t tmpfs -o size=75% tmpfs /upper && mkdir -p /upper/u /upper/w\n\
         mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail 'cannot mount the overlay'\n\
         mkdir -p /newroot/run/pyebpf-kernels\n\
         mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /newroot/run/pyebpf-kernels || fail 'cannot mount the results share'\n\
         for d in proc sys dev; do mount --move /$d /newroot/$d; done\n\
         mount -t tmpfs tmpfs /newroot/tmp\n\
         exec chroot /newroot /bin/sh /run/pyebpf-kernels/guest.sh\n",
    );
    s
}

/// What runs in the guest: a smoke profile, then the chosen tests; results into the share.
fn guest_script(root: &Path, bin: &Path, tests: &BTreeMap<String, PathBuf>) -> String {
    let mut s = format!(
        "#!/bin/sh\n\
         R=/run/pyebpf-kernels\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
         export PYEBPF_BIN={bin} PYEBPF_TEST_PYTHONS={GUEST_PYTHONS} PYEBPF_TEST_EMULATED=1 RUST_BACKTRACE=1\n\
         mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null\n\
         ip link set lo up\n\
         cd {root}\n\
         uname -r > $R/uname\n\
         cut -d' ' -f1 /proc/uptime > $R/boot_secs\n\
         echo \"PYEBPF-GUEST: smoke profile\"\n\
         (while :; do :; done) & SPIN=$!\n\
         $PYEBPF_BIN profile --all -d 3 -o /tmp/smoke.json > $R/smoke.log 2>&1\n\
         status=$?\n\
         kill $SPIN\n\
         # The busy shell must be in the profile: programs that load but sample nothing fail.\n\
         [ $status = 0 ] && ! grep -q \"\\\"pid\\\": $SPIN,\" /tmp/smoke.json && status=100\n\
         cp /tmp/smoke.json $R/ 2>/dev/null\n\
         echo $status > $R/smoke.status\n",
        bin = bin.display(),
        root = root.display(),
    );
    for (test, names) in GUEST_TESTS {
        let Some(exe) = tests.get(test) else { continue };
        writeln!(
            s,
            "echo \"PYEBPF-GUEST: {test}\"\n{} --test-threads=1 --exact {} >> $R/tests.log 2>&1",
            exe.display(),
            names.join(" ")
        )
        .unwrap();
    }
    s.push_str("echo done > $R/finished\nsync\necho o > /proc/sysrq-trigger\nsleep 30\n");
    s
}

/// An uncompressed newc cpio archive (the kernel unpacks it as the initramfs).
fn write_initramfs(path: &Path, busybox: &Path, modules: &[PathBuf]) -> anyhow::Result<()> {
    struct Cpio {
        out: Vec<u8>,
        ino: u32,
    }
    impl Cpio {
        fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
            self.ino += 1;
            let fields =
                [self.ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
            self.out.extend_from_slice(b"070701");
            for f in fields {
                self.out.extend_from_slice(format!("{f:08x}").as_bytes());
            }
            self.out.extend_from_slice(name.as_bytes());
            self.out.push(0);
            self.pad();
            self.out.extend_from_slice(data);
            self.pad();
        }
        fn pad(&mut self) {
            while !self.out.len().is_multiple_of(4) {
                self.out.push(0);
            }
        }
    }
    let mut cpio = Cpio { out: Vec::new(), ino: 0 };
    for dir in ["bin", "dev", "modules", "proc", "sys"] {
        cpio.entry(dir, 0o040755, (0, 0), &[]);
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    cpio.entry("dev/console", 0o020600, (5, 1), &[]);
    cpio.entry("bin/busybox", 0o100755, (0, 0), &std::fs::read(busybox).context("read busybox")?);
    let mut names = Vec::new();
    for m in modules {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        cpio.entry(&format!("modules/{name}"), 0o100644, (0, 0), &std::fs::read(m)?);
        names.push(name);
    }
    cpio.entry("init", 0o100755, (0, 0), init_script(&names).as_bytes());
    cpio.entry("TRAILER!!!", 0, (0, 0), &[]);
    std::fs::write(path, cpio.out).with_context(|| format!("write {}", path.display()))
}

fn boot(files: &KernelFiles, initrd: &Path, results: &Path, opts: &Options, accel: &str) -> anyhow::Result<()> {
    let console = std::fs::File::create(results.join("console.log"))?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", accel, "-cpu", "max", "-nographic", "-no-reboot", "-nodefaults"])
        .args(["-smp", &opts.smp.to_string(), "-m", &format!("{}M", opts.memory_mib)])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&files.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // no_timer_check: the boot-time IO-APIC timer test counts ticks over a busy wait, and an
        // emulated CPU on a loaded host missed them ("IO-APIC + timer doesn't work!", a panic).
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init mitigations=off loglevel=4 no_timer_check"])
        .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"])
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=results,security_model=none", results.display()))
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    let mut child = qemu.spawn().context("start qemu-system-x86_64")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !results.join("finished").exists() {
                let why = std::fs::read_to_string(results.join("console.log"))
                    .ok()
                    .and_then(|log| log.lines().rev().find(|l| l.contains("PYEBPF-GUEST")).map(str::to_string))
                    .unwrap_or_default();
                bail!("the guest stopped before finishing ({status}); last step: {why}");
            }
            return Ok(());
        }
        if start.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {:?}", GUEST_TIMEOUT);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn read_results(results: &Path, files: &KernelFiles, secs: f64, smoke_only: bool) -> Outcome {
    let read = |name: &str| std::fs::read_to_string(results.join(name)).unwrap_or_default();
    let mut outcome = Outcome {
        release: files.release.clone(),
        package: files.package.clone(),
        secs,
        boot_secs: read("boot_secs").trim().parse().ok(),
        passed: Vec::new(),
        failed: Vec::new(),
        error: None,
    };
    let uname = read("uname");
    if !uname.is_empty() && uname.trim() != files.release {
        outcome.error = Some(format!("the guest ran {} instead of {}", uname.trim(), files.release));
    }
    match read("smoke.status").trim() {
        "0" => outcome.passed.push("smoke: profile --all".into()),
        "" => {}
        status => outcome.failed.push(format!("smoke: profile --all (exit {status})")),
    }
    for line in read("tests.log").lines() {
        let Some(rest) = line.strip_prefix("test ") else { continue };
        if let Some(name) = rest.strip_suffix(" ... ok") {
            outcome.passed.push(name.to_string());
        } else if let Some(name) = rest.strip_suffix(" ... FAILED") {
            outcome.failed.push(name.to_string());
        }
    }
    let expected = 1 + if smoke_only { 0 } else { GUEST_TESTS.iter().map(|(_, names)| names.len()).sum::<usize>() };
    if outcome.error.is_none() && outcome.passed.len() + outcome.failed.len() < expected {
        outcome.error = Some(format!("{} of {expected} tests reported", outcome.passed.len() + outcome.failed.len()));
    }
    outcome
}

fn print_outcome(o: &Outcome, results: &Path) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} ({}): {:.0} s", o.release, o.package, o.secs);
    for p in &o.passed {
        let _ = writeln!(out, "  ok      {p}");
    }
    for f in &o.failed {
        let _ = writeln!(out, "  FAILED  {f}");
    }
    if let Some(e) = &o.error {
        let _ = writeln!(out, "  error: {e}");
    }
    if !o.failed.is_empty() || o.error.is_some() {
        let _ = writeln!(out, "  logs: {}", results.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies() {
        let depends: BTreeMap<String, Vec<String>> =
            [("9p", vec!["netfs", "9pnet"]), ("9pnet", vec![]), ("netfs", vec![]), ("9pnet_virtio", vec!["9pnet"])]
                .into_iter()
                .map(|(m, d)| (m.to_string(), d.into_iter().map(str::to_string).collect()))
                .collect();
        let mut order = Vec::new();
        for m in ["9pnet_virtio", "9p", "virtio_pci"] {
            load_after_dependencies(m, &depends, &mut order, 0).unwrap();
        }
        assert_eq!(order, ["9pnet", "9pnet_virtio", "netfs", "9p"]);
        assert_eq!(
            module_name("./usr/lib/modules/6.12.118+deb13-amd64/kernel/net/9p/9pnet-virtio.ko.xz"),
            "9pnet_virtio"
        );
    }

    #[test]
    fn generic_images_only() {
        assert!(is_generic_image("linux-image-5.10.0-46-amd64-unsigned", "5.10"));
        assert!(is_generic_image("linux-image-6.12.118+deb13-amd64-unsigned", "6.12"));
        assert!(!is_generic_image("linux-image-6.12.118+deb13-amd64-unsigned", "6.1"));
        assert!(!is_generic_image("linux-image-6.1.0-57-cloud-amd64-unsigned", "6.1"));
        assert!(!is_generic_image("linux-image-6.1.0-57-rt-amd64-unsigned", "6.1"));
        assert!(version_key("linux-image-5.10.0-46-amd64") > version_key("linux-image-5.10.0-9-amd64"));
    }
}
