//! Free-threaded CPython interpreters (`--disable-gil`, "3.14t") for the tests, built from
//! source once and kept under `target/pythons/3.Xt/`.
//!
//! No distribution here ships them: Debian builds none (sid's `python3.14` and `python3.15`
//! source packages have no free-threaded binary package), pyenv's are not on these machines,
//! and python.org is not reachable from them. The source is Debian's source package of the
//! same version (its `.orig.tar.xz` is CPython's release tarball), fetched with `apt-get
//! source` inside the sid test root, whose package lists name it. It is built on the host with
//! the host's compiler, as a shared library (`libpython3.Xt.so`, so the offset probe can link
//! against it and check layouts on live objects) with frame pointers, and installed into its
//! own prefix; the tests run it by path like a pyenv interpreter.
//!
//! A build takes minutes (`nice`, `make -j2`); it is done once and recorded in a marker file
//! with its time. A failed build leaves a `.failed` note beside the prefix, retried by `cargo
//! xtask test` after a day and by `cargo xtask setup-pythons` at once; the tests then list the
//! version as missing.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{pythons, setup, util};

/// Free-threaded minor versions built (each from sid's `python3.X` source package).
pub const MINORS: &[u8] = &[13, 14, 15];
/// Where the builds go, relative to the workspace.
pub const DIR: &str = "target/pythons";
/// Written into a prefix once its interpreter is installed and runs.
pub const READY_MARKER: &str = ".pyebpf-built";
/// Where `apt-get source` puts the sources inside the test root.
const SOURCES_IN_ROOT: &str = "var/cache/pyebpf-sources";
const FAILED_SUFFIX: &str = ".failed";
const RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Host packages the build needs: a compiler, make, xz for the tarball, and the libraries of the
/// extension modules the tests use (ctypes: libffi; zlib).
const HOST_PACKAGES: &[&str] = &["gcc", "make", "xz-utils", "pkg-config", "libc6-dev", "libffi-dev", "zlib1g-dev"];

/// The prefix of the free-threaded 3.`minor` build.
pub fn prefix(workspace: &Path, minor: u8) -> PathBuf {
    workspace.join(DIR).join(format!("3.{minor}t"))
}

/// Builds every free-threaded interpreter that is missing. `explicit`: asked for by name, so a
/// recent failure is retried and a failure is an error.
pub fn ensure(workspace: &Path, root: &Path, explicit: bool) -> Result<()> {
    let mut failures = Vec::new();
    for &minor in MINORS {
        let prefix = prefix(workspace, minor);
        if prefix.join(READY_MARKER).exists() && check(&prefix, minor).is_ok() {
            continue;
        }
        let failed = failed_marker(&prefix);
        if !explicit && let Some(reason) = recent_failure(&failed) {
            eprintln!(
                "xtask: no free-threaded 3.{minor}t (the last build failed less than a day ago: {reason}); \
                 `cargo xtask setup-pythons` tries again"
            );
            continue;
        }
        match build(root, &prefix, minor) {
            Ok(()) => {
                let _ = fs::remove_file(&failed);
            }
            Err(e) => {
                let _ = fs::create_dir_all(prefix.parent().unwrap_or(Path::new(".")));
                let _ = fs::write(&failed, format!("{e:#}"));
                eprintln!("xtask: free-threaded 3.{minor}t could not be built: {e:#}");
                failures.push(format!("3.{minor}t: {e:#}"));
            }
        }
    }
    if explicit && !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

fn failed_marker(prefix: &Path) -> PathBuf {
    let mut name = prefix.file_name().unwrap_or_default().to_os_string();
    name.push(FAILED_SUFFIX);
    prefix.with_file_name(name)
}

fn recent_failure(marker: &Path) -> Option<String> {
    let age = fs::metadata(marker).ok()?.modified().ok()?.elapsed().unwrap_or_default();
    (age < RETRY_AFTER).then(|| fs::read_to_string(marker).unwrap_or_default().trim().to_owned())
}

/// The installed interpreter runs, is 3.`minor` and has the GIL disabled.
fn check(prefix: &Path, minor: u8) -> Result<String> {
    let python = prefix.join(format!("bin/python3.{minor}t"));
    let out = Command::new(&python)
        .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3], sys._is_gil_enabled())"])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success() && text.starts_with(&format!("3.{minor}.")) && text.ends_with(" False"),
        "{} is not a free-threaded 3.{minor}: {text} {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(text.split(' ').next().unwrap_or_default().to_owned())
}

fn build(root: &Path, prefix: &Path, minor: u8) -> Result<()> {
    util::require_root("fetching CPython's source runs apt-get in the test root through chroot")?;
    ensure!(
        root.join(".pyebpf-test-root").exists(),
        "no test root at {} to fetch the source with (see `cargo xtask setup-pythons`)",
        root.display()
    );
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .copied()
        .filter(|p| util::output("dpkg-query", &["-W", "-f=${Status}", p]).is_none_or(|s| !s.contains("installed")))
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing {} (to build CPython)", missing.join(" "));
        setup::apt_install(&missing)?;
    }
    let tarball = fetch_source(root, minor)?;
    let work = prefix.with_file_name(format!("build-3.{minor}t"));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    if prefix.exists() {
        fs::remove_dir_all(prefix).with_context(|| format!("removing {}", prefix.display()))?;
    }
    fs::create_dir_all(&work)?;
    util::run(Command::new("tar").arg("-xJf").arg(&tarball).arg("-C").arg(&work).arg("--strip-components=1"))?;

    let started = Instant::now();
    eprintln!(
        "xtask: building free-threaded CPython 3.{minor}t from {} (several minutes, once; log in {})",
        tarball.file_name().unwrap_or_default().to_string_lossy(),
        work.join("build.log").display()
    );
    let log = fs::File::create(work.join("build.log"))?;
    let step = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new("nice");
        cmd.arg("-n").arg("10").args(args).current_dir(&work);
        cmd.stdout(log.try_clone()?).stderr(log.try_clone()?);
        let status = cmd.status().with_context(|| format!("running {args:?}"))?;
        ensure!(status.success(), "{} failed ({status}); see {}", args.join(" "), work.join("build.log").display());
        Ok(())
    };
    let prefix_arg = format!("--prefix={}", prefix.display());
    // The shared library is found through the run path, so the interpreter runs from anywhere.
    let ldflags = format!("LDFLAGS=-Wl,-rpath,{}", prefix.join("lib").display());
    step(&[
        "./configure",
        &prefix_arg,
        "--disable-gil",
        "--enable-shared",
        "--without-ensurepip",
        "--disable-test-modules",
        &ldflags,
        // Frame pointers, as CPython 3.15 builds by default: native stacks of the interpreter
        // unwind through it.
        "CFLAGS=-fno-omit-frame-pointer -mno-omit-leaf-frame-pointer",
    ])?;
    step(&["make", "-j2"])?;
    step(&["make", "install"])?;
    let version = check(prefix, minor)?;
    let seconds = started.elapsed().as_secs_f64();
    fs::write(
        prefix.join(READY_MARKER),
        format!(
            "CPython {version} free-threaded, built from {} in {seconds:.0} s\n",
            tarball.file_name().unwrap_or_default().to_string_lossy()
        ),
    )?;
    let _ = fs::remove_dir_all(&work);
    eprintln!("xtask: built free-threaded CPython {version}t in {seconds:.0} s ({})", prefix.display());
    Ok(())
}

/// Debian's source package of `python3.<minor>` in the test root (fetched once): the path of its
/// `.orig.tar.xz` on the host.
fn fetch_source(root: &Path, minor: u8) -> Result<PathBuf> {
    let dir = root.join(SOURCES_IN_ROOT);
    let package = format!("python3.{minor}");
    let find = || -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".orig.tar.xz"))
            })
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(tarball) = find() {
        return Ok(tarball);
    }
    fs::create_dir_all(&dir)?;
    enable_sources(root)?;
    // Every version the archive's index lists, newest first: a mirror may not serve them all.
    let listed = pythons::chroot(root, &["apt-cache", "showsrc", &package]).output().context("running apt-cache")?;
    let mut versions: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .map(str::to_owned)
        .collect();
    versions.sort_by_key(|v| version_key(v));
    versions.dedup();
    ensure!(!versions.is_empty(), "the test root's archive lists no {package} source package");
    let inside = format!("/{SOURCES_IN_ROOT}");
    let mut errors = Vec::new();
    for version in versions.iter().rev() {
        eprintln!("xtask: fetching Debian's {package} {version} source package in the test root");
        let fetched = pythons::chroot(
            root,
            &[
                "sh",
                "-c",
                &format!(
                    "cd {inside} && apt-get -o {} -qq source --download-only {package}={version}",
                    pythons::NO_EXPIRY
                ),
            ],
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("running apt-get source")?;
        if fetched.status.success()
            && let Some(tarball) = find()
        {
            return Ok(tarball);
        }
        let why = String::from_utf8_lossy(&fetched.stderr);
        let why = why.lines().find(|l| l.starts_with("E:")).unwrap_or("no tarball").to_owned();
        errors.push(format!("{version}: {why}"));
    }
    bail!("no {package} source package could be fetched ({})", errors.join("; "))
}

/// Sort key of a Debian version like "3.14.10-1": its numbers in order.
fn version_key(version: &str) -> Vec<u64> {
    version.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).filter_map(|p| p.parse().ok()).collect()
}

/// Adds `deb-src` lines for the root's own archive (debootstrap writes only `deb`), and reads
/// the source lists.
fn enable_sources(root: &Path) -> Result<()> {
    let list = root.join("etc/apt/sources.list.d/pyebpf-sources.list");
    if !list.exists() {
        let main = fs::read_to_string(root.join("etc/apt/sources.list")).unwrap_or_default();
        let sources: Vec<String> =
            main.lines().filter_map(|l| l.strip_prefix("deb ")).map(|rest| format!("deb-src {rest}\n")).collect();
        ensure!(!sources.is_empty(), "{} names no archive", root.join("etc/apt/sources.list").display());
        fs::write(&list, sources.concat())?;
    }
    pythons::apt_update_in(root)
}
