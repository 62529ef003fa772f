//! `cargo xtask setup-pythons`: CPython interpreters for the tests that pyenv does not provide.
//!
//! - An OS root the tests run interpreters in through chroot(2), the way a container runs its
//!   Python: Debian sid with `python3.14` and `python3.15` (`target/test-roots/sid`, about
//!   300 MB, made by `debootstrap --variant=minbase` in 3–5 minutes). It is made once: later
//!   runs only check that it is there (a stat and one chroot run per interpreter); a root made
//!   before an interpreter joined the list gets it with apt-get.
//! - Free-threaded interpreters (`--disable-gil`), built from Debian's source packages of the
//!   same versions (see `cpython_build`), under `target/pythons/`.
//!
//! When the root cannot be made (no network, sid no longer ships an interpreter) this says why
//! and carries on: the tests then list those versions among the missing ones instead of
//! failing. A failed attempt is not retried by `cargo xtask test` for a day (`cargo xtask
//! setup-pythons` always retries).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cpython_build, python_offsets::TEST_ROOT, setup, util};

/// The Debian suite and the interpreter packages the root is made with.
const SUITE: &str = "sid";
/// The interpreters of the root: (package and command, minor version).
pub const PYTHONS: &[(&str, u8)] = &[("python3.14", 14), ("python3.15", 15)];
/// What `--dev` adds: the headers (with the internal ones) and a compiler for the offset probe.
const DEV_PACKAGES: &[&str] = &["libpython3.14-dev", "libpython3.15-dev", "gcc", "libc6-dev"];
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Written into the root once it is complete.
const READY_MARKER: &str = ".pyebpf-test-root";
/// Beside the root after a failed attempt, with the reason.
const FAILED_SUFFIX: &str = ".failed";
const RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Makes the test root if it is missing (`explicit`: asked for by name, so a recent failure is
/// retried and a failure is an error), and with `dev` also the headers and compiler that
/// `gen-python-offsets` needs inside it.
pub fn ensure(workspace: &Path, explicit: bool, dev: bool) -> Result<()> {
    let root = workspace.join(TEST_ROOT);
    match ensure_root(&root, explicit) {
        Ok(()) => {}
        Err(e) if !explicit => {
            eprintln!(
                "xtask: no {SUITE} test root ({e:#}); the CPython tests will list {} and the free-threaded \
                 builds as missing. `cargo xtask setup-pythons` tries again.",
                versions()
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    if dev {
        ensure_dev(&root)?;
    }
    cpython_build::ensure(workspace, &root, explicit)
}

/// "3.14, 3.15".
fn versions() -> String {
    PYTHONS.iter().map(|(_, minor)| format!("3.{minor}")).collect::<Vec<_>>().join(", ")
}

fn ensure_root(root: &Path, explicit: bool) -> Result<()> {
    if root.join(READY_MARKER).exists() {
        return check_pythons(root);
    }
    let failed = failed_marker(root);
    if !explicit && let Some(reason) = recent_failure(&failed) {
        bail!("the last attempt failed less than a day ago: {reason}");
    }
    util::require_root("making the test root runs debootstrap")?;
    let started = Instant::now();
    match make_root(root) {
        Ok(()) => {
            let _ = fs::remove_file(&failed);
            eprintln!("xtask: made the {SUITE} test root in {:.0} s", started.elapsed().as_secs_f64());
            check_pythons(root)
        }
        Err(e) => {
            if let Some(parent) = failed.parent() {
                let _ = fs::create_dir_all(parent);
            }
            let _ = fs::write(&failed, format!("{e:#}"));
            Err(e)
        }
    }
}

fn failed_marker(root: &Path) -> PathBuf {
    let mut name = root.file_name().unwrap_or_default().to_os_string();
    name.push(FAILED_SUFFIX);
    root.with_file_name(name)
}

fn recent_failure(marker: &Path) -> Option<String> {
    let age = fs::metadata(marker).ok()?.modified().ok()?.elapsed().unwrap_or_default();
    (age < RETRY_AFTER).then(|| fs::read_to_string(marker).unwrap_or_default().trim().to_owned())
}

/// Every interpreter of [`PYTHONS`] runs in the root and is the version the tests expect. One
/// missing from a root made before it joined the list is installed with apt-get.
fn check_pythons(root: &Path) -> Result<()> {
    let missing: Vec<&str> =
        PYTHONS.iter().filter(|(python, _)| !root.join("usr/bin").join(python).exists()).map(|(p, _)| *p).collect();
    if !missing.is_empty() {
        util::require_root("installing interpreters in the test root runs apt-get through chroot")?;
        eprintln!("xtask: installing {} in the {SUITE} test root", missing.join(" "));
        apt_install_in(root, &missing)?;
    }
    for (python, minor) in PYTHONS {
        let out = chroot(root, &[python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
            .output()
            .context("running chroot")?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(
            out.status.success() && version.starts_with(&format!("3.{minor}.")),
            "{python} in {} does not run: {} {}",
            root.display(),
            version,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `apt-get install` inside the root. Its package lists may be older than the mirror's Release
/// file is valid for, so their expiry is not checked.
pub fn apt_install_in(root: &Path, packages: &[&str]) -> Result<()> {
    apt_update_in(root)?;
    let mut args = vec!["apt-get", "-o", NO_EXPIRY, "install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    util::run(chroot(root, &args).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// `apt-get update` inside the root.
pub fn apt_update_in(root: &Path) -> Result<()> {
    util::run(chroot(root, &["apt-get", "-o", NO_EXPIRY, "update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The root's package lists may be older than the mirror's Release file is valid for.
pub const NO_EXPIRY: &str = "Acquire::Check-Valid-Until=false";

/// debootstrap into `<root>.partial`, then rename: an interrupted run never leaves a root that
/// looks complete.
fn make_root(root: &Path) -> Result<()> {
    if util::output("debootstrap", &["--version"]).is_none() && !Path::new("/usr/sbin/debootstrap").exists() {
        eprintln!("xtask: installing debootstrap from Debian");
        setup::apt_install(&["debootstrap"])?;
    }
    let mut partial = root.as_os_str().to_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    if partial.exists() {
        unmount_under(&partial);
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    fs::create_dir_all(partial.parent().context("root has a parent")?)?;
    let mirror = std::env::var("PYEBPF_DEBIAN_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.to_owned());
    let include = PYTHONS.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(",");
    eprintln!("xtask: making the {SUITE} test root: debootstrap {SUITE} from {mirror} (3-5 minutes, ~300 MB)");
    let log = partial.with_extension("log");
    let result = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={include}"), SUITE])
        .arg(&partial)
        .arg(&mirror)
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .context("running debootstrap");
    // debootstrap mounts /proc and /sys in the target while it installs; they must not stay.
    unmount_under(&partial);
    let out = result?;
    let text = String::from_utf8_lossy(&[out.stdout.as_slice(), out.stderr.as_slice()].concat()).into_owned();
    let _ = fs::write(&log, &text);
    if !out.status.success() {
        // debootstrap says what went wrong in its "E:" lines (on stdout or stderr).
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
        let why = if errors.is_empty() { text.lines().last().unwrap_or("").to_owned() } else { errors.join(" / ") };
        let _ = fs::remove_dir_all(&partial);
        bail!("debootstrap {SUITE} failed ({}): {why} (log: {})", out.status, log.display());
    }
    // Downloaded packages are not needed once installed.
    if let Ok(debs) = fs::read_dir(partial.join("var/cache/apt/archives")) {
        for deb in debs.flatten().filter(|d| d.path().extension().is_some_and(|e| e == "deb")) {
            let _ = fs::remove_file(deb.path());
        }
    }
    fs::write(partial.join(READY_MARKER), format!("debootstrap {SUITE} --include={include} from {mirror}\n"))?;
    if root.exists() {
        unmount_under(root);
        fs::remove_dir_all(root).with_context(|| format!("removing the incomplete {}", root.display()))?;
    }
    fs::rename(&partial, root).with_context(|| format!("renaming {} to {}", partial.display(), root.display()))?;
    let _ = fs::remove_file(&log);
    Ok(())
}

/// Headers and a compiler in the root, for `cargo xtask gen-python-offsets`.
fn ensure_dev(root: &Path) -> Result<()> {
    let headers = PYTHONS
        .iter()
        .all(|(_, minor)| root.join(format!("usr/include/python3.{minor}/internal/pycore_debug_offsets.h")).exists());
    let cc = chroot(root, &["sh", "-c", "command -v cc"]).output().is_ok_and(|o| o.status.success());
    if headers && cc {
        return Ok(());
    }
    eprintln!("xtask: installing {} in the test root", DEV_PACKAGES.join(" "));
    apt_install_in(root, DEV_PACKAGES)
}

pub fn chroot(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(root).args(args).env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    cmd
}

/// Unmounts (lazily) whatever is mounted at or below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(dir) = fs::canonicalize(dir) else { return };
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else { return };
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for mount in mounts {
        let _ = Command::new("umount").arg("-l").arg(&mount).status();
    }
}
