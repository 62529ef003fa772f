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
    // The archive's index names only its newest upload, whose files this mirror may not have
    // (sid's python3.14 3.14.10 and python3.15 3.15.2 answer 404 here) while the pool still
    // keeps earlier ones. Any release of the minor version serves the tests: the layouts they
    // need are the minor version's (and `_Py_DebugOffsets` is checked live).
    match fetch_from_pool(root, &package, &versions, &dir) {
        Ok(tarball) => Ok(tarball),
        Err(e) => {
            bail!("no {package} source package could be fetched ({}; earlier releases: {e:#})", errors.join("; "))
        }
    }
}

/// Earlier upstream releases of the minor version, newest first, below the newest one the index
/// lists: its earlier patch releases, then the release candidates of its `.0`.
fn earlier_releases(listed: &[String]) -> Vec<String> {
    let Some(newest) = listed.iter().max_by_key(|v| version_key(v)) else { return Vec::new() };
    let upstream = newest.split('-').next().unwrap_or(newest);
    let upstream = upstream.split('~').next().unwrap_or(upstream);
    let parts: Vec<&str> = upstream.split('.').collect();
    let [major, minor, patch] = parts[..] else { return Vec::new() };
    let Ok(patch) = patch.parse::<u32>() else { return Vec::new() };
    let mut out: Vec<String> = (0..patch).rev().map(|p| format!("{major}.{minor}.{p}")).collect();
    out.extend((1..=RELEASE_CANDIDATES).rev().map(|rc| format!("{major}.{minor}.0~rc{rc}")));
    out
}

/// Release candidates of a `.0` tried (CPython makes 2-3; its ABI is frozen from the first).
const RELEASE_CANDIDATES: u32 = 3;
/// Debian revisions tried per upstream release.
const REVISIONS: u32 = 3;

/// Fetches an earlier release's `.orig.tar.xz` from the archive's pool, found through its `.dsc`
/// (not in the index, so fetched by name) and checked against the SHA-256 the `.dsc` gives, with
/// apt's own downloader in the test root (its proxy settings apply).
fn fetch_from_pool(root: &Path, package: &str, listed: &[String], dir: &Path) -> Result<PathBuf> {
    let sources = fs::read_to_string(root.join("etc/apt/sources.list")).unwrap_or_default();
    let mirror = sources
        .lines()
        .find_map(|l| l.strip_prefix("deb ").and_then(|rest| rest.split_whitespace().next()))
        .context("the test root's sources.list names no archive")?
        .trim_end_matches('/')
        .to_owned();
    let prefix = package.chars().next().unwrap_or('p');
    let pool = format!("{mirror}/pool/main/{prefix}/{package}");
    let inside = format!("/{SOURCES_IN_ROOT}");
    let download = |name: &str, hash: Option<&str>| -> bool {
        let mut args = vec!["/usr/lib/apt/apt-helper".to_owned(), "download-file".to_owned()];
        args.push(format!("{pool}/{name}"));
        args.push(format!("{inside}/{name}"));
        if let Some(hash) = hash {
            args.push(format!("SHA256:{hash}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pythons::chroot(root, &args).output().is_ok_and(|o| o.status.success())
    };
    for upstream in earlier_releases(listed) {
        for revision in 1..=REVISIONS {
            let dsc = format!("{package}_{upstream}-{revision}.dsc");
            if !download(&dsc, None) {
                continue;
            }
            let text = fs::read_to_string(dir.join(&dsc)).unwrap_or_default();
            let _ = fs::remove_file(dir.join(&dsc));
            let Some((hash, tarball)) = orig_tarball_checksum(&text) else { continue };
            eprintln!("xtask: fetching {tarball} from the archive's pool (not in its index)");
            if download(&tarball, Some(&hash)) {
                return Ok(dir.join(tarball));
            }
            let _ = fs::remove_file(dir.join(&tarball));
        }
    }
    bail!("none in {pool}")
}

/// The `.orig.tar.xz` named in a `.dsc`'s `Checksums-Sha256` field, with its SHA-256.
fn orig_tarball_checksum(dsc: &str) -> Option<(String, String)> {
    dsc.lines().skip_while(|l| !l.starts_with("Checksums-Sha256:")).skip(1).take_while(|l| l.starts_with(' ')).find_map(
        |l| {
            let mut fields = l.split_whitespace();
            let (hash, _size, name) = (fields.next()?, fields.next()?, fields.next()?);
            (name.ends_with(".orig.tar.xz") && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| (hash.to_owned(), name.to_owned()))
        },
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_releases_count_down_then_release_candidates() {
        let listed = vec!["3.14.9-1".to_owned(), "3.14.10-1".to_owned()];
        let got = earlier_releases(&listed);
        assert_eq!(got.first().map(String::as_str), Some("3.14.9"));
        assert_eq!(got[9], "3.14.0");
        assert_eq!(&got[10..], ["3.14.0~rc3", "3.14.0~rc2", "3.14.0~rc1"]);
        assert_eq!(earlier_releases(&["3.15.0~rc2-1".to_owned()]), ["3.15.0~rc3", "3.15.0~rc2", "3.15.0~rc1"]);
        assert!(earlier_releases(&["garbage".to_owned()]).is_empty());
    }

    #[test]
    fn the_orig_tarball_checksum_is_read_from_the_dsc() {
        let dsc = "Format: 3.0 (quilt)\nChecksums-Sha1:\n 0123 1 python3.14_3.14.7.orig.tar.xz\n\
                   Checksums-Sha256:\n 3b48dac8fb59f62eaa67ac83c1eb12bda1b7a08406dd286e252c11a66be27f81 24053924 python3.14_3.14.7.orig.tar.xz\n \
                   43187e8f368dfdcb77ef1f879c50dcacfb1438ca01657859f2a06cfaf9c3cd2a 223864 python3.14_3.14.7-1.debian.tar.xz\nFiles:\n";
        assert_eq!(
            orig_tarball_checksum(dsc),
            Some((
                "3b48dac8fb59f62eaa67ac83c1eb12bda1b7a08406dd286e252c11a66be27f81".to_owned(),
                "python3.14_3.14.7.orig.tar.xz".to_owned()
            ))
        );
        assert_eq!(orig_tarball_checksum("Checksums-Sha256:\n nothex 1 a.orig.tar.xz\n"), None);
    }
}
