//! `cargo xtask setup-pythons`: CPython interpreters for the tests that pyenv does not provide,
//! in OS roots the tests run them in through chroot(2), the way a container runs its Python.
//!
//! The one root so far is Debian sid with `python3.14` (`target/test-roots/sid`, about 275 MB,
//! made by `debootstrap --variant=minbase` in 3–5 minutes). It is made once: later runs only
//! check that it is there (a stat and one chroot run). When it cannot be made (no network, sid
//! no longer ships `python3.14`) this says why and carries on: the tests then list 3.14 among
//! the missing versions instead of failing. A failed attempt is not retried by `cargo xtask
//! test` for a day (`cargo xtask setup-pythons` always retries).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{python_offsets::TEST_ROOT, setup, util};

/// The Debian suite and the interpreter packages the root is made with.
const SUITE: &str = "sid";
const PYTHON: &str = "python3.14";
/// What `--dev` adds: the headers (with the internal ones) and a compiler for the offset probe.
const DEV_PACKAGES: &[&str] = &["libpython3.14-dev", "gcc", "libc6-dev"];
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
                "xtask: no {PYTHON} test root ({e:#}); the CPython tests will list 3.14 as missing. \
                 `cargo xtask setup-pythons` tries again."
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    if dev {
        ensure_dev(&root)?;
    }
    Ok(())
}

fn ensure_root(root: &Path, explicit: bool) -> Result<()> {
    if root.join(READY_MARKER).exists() {
        return check_python(root);
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
            eprintln!("xtask: made the {PYTHON} test root in {:.0} s", started.elapsed().as_secs_f64());
            check_python(root)
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

/// The interpreter runs in the root and is the version the tests expect.
fn check_python(root: &Path) -> Result<()> {
    let out = chroot(root, &[PYTHON, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        .output()
        .context("running chroot")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success() && version.starts_with("3.14."),
        "{PYTHON} in {} does not run: {} {}",
        root.display(),
        version,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

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
    eprintln!("xtask: making the {PYTHON} test root: debootstrap {SUITE} from {mirror} (3-5 minutes, ~275 MB)");
    let log = partial.with_extension("log");
    let result = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={PYTHON}"), SUITE])
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
    fs::write(partial.join(READY_MARKER), format!("debootstrap {SUITE} --include={PYTHON} from {mirror}\n"))?;
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
    let headers = root.join("usr/include/python3.14/internal/pycore_debug_offsets.h");
    let cc = chroot(root, &["sh", "-c", "command -v cc"]).output().is_ok_and(|o| o.status.success());
    if headers.exists() && cc {
        return Ok(());
    }
    eprintln!("xtask: installing {} in the test root", DEV_PACKAGES.join(" "));
    // The root's package lists may be older than the mirror's Release file is valid for.
    let no_expiry = "Acquire::Check-Valid-Until=false";
    util::run(chroot(root, &["apt-get", "-o", no_expiry, "update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    let mut args = vec!["apt-get", "-o", no_expiry, "install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(DEV_PACKAGES);
    util::run(chroot(root, &args).env("DEBIAN_FRONTEND", "noninteractive"))
}

fn chroot(root: &Path, args: &[&str]) -> Command {
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
