//! The CPython interpreters on this machine, and Python workloads to profile.
//!
//! Interpreters come from pyenv, the system `/usr/bin/python3`, OS roots: distribution file
//! trees (made by `cargo xtask setup-pythons` under target/test-roots) whose interpreters run
//! through chroot(2), as in a container: another mount namespace, paths that mean something else
//! inside, a libc the host does not have; and free-threaded builds (`--disable-gil`) that
//! `cargo xtask setup-pythons` makes from source under target/pythons. Workload scripts are
//! copied into a root, and the files expected in frames are the paths its processes see.
use std::{
    ffi::OsString,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{KillOnDrop, Value};

/// Minor versions the product supports; every one found is tested, every one missing is said.
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u8> = 8..=15;
/// Minor versions whose free-threaded builds the product supports (same rule).
pub const FREE_THREADED_MINORS: std::ops::RangeInclusive<u8> = 13..=15;

/// Where `cargo xtask setup-pythons` builds free-threaded interpreters (`3.Xt/` each), and the
/// file it leaves in a complete one.
const BUILT_PYTHONS: &str = "target/pythons";
const BUILT_READY: &str = ".pyebpf-built";

/// Where `cargo xtask setup-pythons` makes OS roots, and the file it leaves in a complete one.
const TEST_ROOTS: &str = "target/test-roots";
const ROOT_READY: &str = ".pyebpf-test-root";
/// Where workload scripts go inside a root.
const ROOT_WORKLOADS: &str = "tmp/pyebpf-workloads";

#[derive(Debug, Clone)]
pub struct Interpreter {
    /// e.g. "3.12.1 (pyenv)".
    pub label: String,
    /// The interpreter as its processes see it (inside `root` for a root).
    pub path: PathBuf,
    pub minor: u8,
    /// A free-threaded build (no GIL: threads run Python in parallel).
    pub free_threaded: bool,
    /// The OS root it runs in through chroot; None for this machine's own file tree.
    pub root: Option<PathBuf>,
}

impl Interpreter {
    /// The command line that starts it: `path`, or `chroot ROOT path`.
    pub fn argv(&self) -> Vec<OsString> {
        match &self.root {
            Some(root) => vec!["chroot".into(), root.into(), self.path.clone().into()],
            None => vec![self.path.clone().into()],
        }
    }

    /// A command that starts it (arguments still to add).
    pub fn command(&self) -> Command {
        let argv = self.argv();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd
    }

    /// The workload script `name` (tests/workloads) as this interpreter's processes see it:
    /// the file itself, or a copy inside the root.
    pub fn workload(&self, name: &str) -> PathBuf {
        let source = workload(name);
        let Some(root) = &self.root else { return source };
        let inside = Path::new("/").join(ROOT_WORKLOADS).join(name);
        let copy = root.join(ROOT_WORKLOADS).join(name);
        let text = std::fs::read(&source).unwrap_or_else(|e| panic!("read {}: {e}", source.display()));
        if std::fs::read(&copy).ok().as_ref() != Some(&text) {
            std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
            let tmp = copy.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, &copy).unwrap();
        }
        inside
    }

    /// `argv` and `args` as one `sh` command line.
    pub fn shell_line(&self, args: &[&Path]) -> String {
        let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
        self.argv()
            .iter()
            .map(|a| quote(a))
            .chain(args.iter().map(|a| quote(a.as_os_str())))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn minor_of(version: &str) -> Option<u8> {
    let mut parts = version.split('.');
    (parts.next()? == "3").then_some(())?;
    parts.next()?.parse().ok()
}

/// "3.X.Y" of an interpreter, by running it.
fn version_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The OS roots to take interpreters from: `$PYEBPF_TEST_ROOTS` (colon-separated), else every
/// complete root under target/test-roots. Also says why none is there, for the report.
fn test_roots() -> (Vec<PathBuf>, Option<String>) {
    if let Some(list) = std::env::var_os("PYEBPF_TEST_ROOTS") {
        return (std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()).collect(), None);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(TEST_ROOTS);
    let mut roots = Vec::new();
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.join(ROOT_READY).exists() {
            roots.push(path);
        } else if path.extension().is_some_and(|e| e == "failed") {
            let reason = std::fs::read_to_string(&path).unwrap_or_default();
            failures.push(format!("{}: {}", path.display(), reason.trim()));
        }
    }
    roots.sort();
    let why = if roots.is_empty() {
        Some(if failures.is_empty() {
            "no OS root: `cargo xtask setup-pythons` makes one (`cargo xtask test` does it too)".to_string()
        } else {
            format!("OS root could not be made ({})", failures.join("; "))
        })
    } else {
        None
    };
    (roots, why)
}

/// `python3.N` interpreters of an OS root, run through chroot.
fn root_interpreters(root: &Path) -> Vec<Interpreter> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root.join("usr/bin")).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(minor) = name.strip_prefix("python3.").and_then(|m| m.parse::<u8>().ok()) else { continue };
        if minor < *SUPPORTED_MINORS.start() {
            continue;
        }
        let mut interp = Interpreter {
            label: String::new(),
            path: Path::new("/usr/bin").join(&name),
            minor,
            free_threaded: false,
            root: Some(root.to_path_buf()),
        };
        match version_of(&mut interp.command()) {
            Some(version) if minor_of(&version) == Some(minor) => {
                let root_name = root.file_name().unwrap_or_default().to_string_lossy();
                interp.label = format!("{version} (chroot {root_name}: {})", interp.path.display());
                found.push(interp);
            }
            other => eprintln!("{name} in {} does not run: {other:?}", root.display()),
        }
    }
    found
}

/// The free-threaded interpreters `cargo xtask setup-pythons` built, and why the others are not
/// there (from the notes a failed build leaves).
fn built_interpreters() -> (Vec<Interpreter>, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(BUILT_PYTHONS);
    let mut found = Vec::new();
    let mut failures = Vec::new();
    for minor in FREE_THREADED_MINORS {
        let prefix = dir.join(format!("3.{minor}t"));
        let path = prefix.join(format!("bin/python3.{minor}t"));
        if prefix.join(BUILT_READY).exists() {
            match version_of(&mut Command::new(&path)) {
                Some(version) if minor_of(&version) == Some(minor) => found.push(Interpreter {
                    label: format!("{version}t (free-threaded, built from source: {})", path.display()),
                    path,
                    minor,
                    free_threaded: true,
                    root: None,
                }),
                other => failures.push(format!("{} does not run: {other:?}", path.display())),
            }
            continue;
        }
        let failed = dir.join(format!("3.{minor}t.failed"));
        match std::fs::read_to_string(&failed) {
            Ok(reason) => failures.push(format!("3.{minor}t could not be built: {}", reason.trim())),
            Err(_) => failures.push(format!("3.{minor}t not built: `cargo xtask setup-pythons` builds it")),
        }
    }
    (found, failures)
}

/// Every CPython 3.8+ here: pyenv versions, the system python3 and OS roots' interpreters.
/// Prints which supported versions are missing, so a machine without them says so in the test
/// output.
pub fn interpreters() -> Vec<Interpreter> {
    // Found once per test binary: finding them runs every interpreter (and may set up a root),
    // seconds that a test must not spend between starting pyebpf and its workload.
    static FOUND: std::sync::OnceLock<Vec<Interpreter>> = std::sync::OnceLock::new();
    FOUND.get_or_init(find_interpreters).clone()
}

fn find_interpreters() -> Vec<Interpreter> {
    let mut found = Vec::new();
    let pyenv = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".pyenv"))
        .join("versions");
    if let Ok(dirs) = std::fs::read_dir(&pyenv) {
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            let Some(minor) = minor_of(&name) else { continue };
            // Plain releases only (not 3.13t free-threaded builds or virtualenvs).
            if minor < *SUPPORTED_MINORS.start() || !name.chars().all(|c| c.is_ascii_digit() || c == '.') {
                continue;
            }
            let path = dir.path().join(format!("bin/python3.{minor}"));
            if path.exists() {
                found.push(Interpreter {
                    label: format!("{name} (pyenv)"),
                    path,
                    minor,
                    free_threaded: false,
                    root: None,
                });
            }
        }
    }
    for system in ["/usr/bin/python3"] {
        let Ok(real) = std::fs::canonicalize(system) else { continue };
        let version = version_of(&mut Command::new(&real)).unwrap_or_default();
        if let Some(minor) = minor_of(&version).filter(|m| *m >= *SUPPORTED_MINORS.start()) {
            found.push(Interpreter {
                label: format!("{version} (system {})", real.display()),
                path: real,
                minor,
                free_threaded: false,
                root: None,
            });
        }
    }
    let (roots, no_root) = test_roots();
    for root in &roots {
        found.extend(root_interpreters(root));
    }
    let (built, not_built) = built_interpreters();
    found.extend(built);
    found.sort_by(|a, b| (a.minor, a.free_threaded, &a.label).cmp(&(b.minor, b.free_threaded, &b.label)));
    // `PYEBPF_TEST_PYTHONS=3.8,3.13`: only these versions (`3.13t` for a free-threaded build;
    // `cargo xtask test-kernels` runs the tests under emulation, where every interpreter would
    // take too long).
    if let Some(only) = std::env::var_os("PYEBPF_TEST_PYTHONS") {
        let only = only.to_string_lossy().into_owned();
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        found.retain(|i| {
            let version = format!("3.{}{}", i.minor, if i.free_threaded { "t" } else { "" });
            wanted.contains(&version.as_str())
        });
        // One interpreter per version (pyenv's, not also the system's or a root's).
        found.dedup_by_key(|i| (i.minor, i.free_threaded));
        eprintln!("PYEBPF_TEST_PYTHONS={only}: testing only these versions");
        assert!(!found.is_empty(), "PYEBPF_TEST_PYTHONS={only}: no such interpreter here");
        return found;
    }
    let mut missing: Vec<String> = SUPPORTED_MINORS
        .filter(|m| !found.iter().any(|i| i.minor == *m && !i.free_threaded))
        .map(|m| format!("3.{m}"))
        .collect();
    missing.extend(
        FREE_THREADED_MINORS
            .filter(|m| !found.iter().any(|i| i.minor == *m && i.free_threaded))
            .map(|m| format!("3.{m}t")),
    );
    eprintln!(
        "CPython interpreters under test: {}",
        found.iter().map(|i| i.label.as_str()).collect::<Vec<_>>().join(", ")
    );
    if !missing.is_empty() {
        eprintln!("MISSING CPython versions (not tested on this machine): {}", missing.join(", "));
        if let Some(why) = no_root {
            eprintln!("  ({why})");
        }
        for why in not_built {
            eprintln!("  ({why})");
        }
    }
    assert!(!found.is_empty(), "no CPython 3.8+ interpreter found");
    found
}

/// The newest interpreter with a GIL that runs on the host itself (not through a root), for
/// tests that need one Python and start it by path.
pub fn host_interpreter() -> Interpreter {
    interpreters()
        .into_iter()
        .filter(|i| i.root.is_none() && !i.free_threaded)
        .max_by_key(|i| i.minor)
        .expect("no CPython 3.8+ on the host")
}

/// The interpreters that run on the host itself, for tests that build their own file tree
/// around an interpreter or hand it host paths; says which ones (in OS roots) they leave out.
pub fn host_interpreters() -> Vec<Interpreter> {
    let (host, rooted): (Vec<Interpreter>, Vec<Interpreter>) =
        interpreters().into_iter().partition(|i| i.root.is_none());
    if !rooted.is_empty() {
        eprintln!(
            "not covered by this test (it hands the interpreter host paths): {}",
            rooted.iter().map(|i| i.label.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    assert!(!host.is_empty(), "no CPython 3.8+ on the host");
    host
}

/// [`for_each_interpreter`] over [`host_interpreters`].
pub fn for_each_host_interpreter(what: &str, mut check: impl FnMut(&Interpreter) -> Result<(), String>) {
    let failures: Vec<String> =
        host_interpreters().iter().filter_map(|i| check(i).err().map(|e| format!("{}: {e}", i.label))).collect();
    assert!(failures.is_empty(), "{what} failed on:\n{}", failures.join("\n"));
}

/// Starts `python script args...` from host paths and waits for it to print "ready".
pub fn start_script(python: &Path, script: &Path, args: &[&str]) -> KillOnDrop {
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", python.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "{} did not start", script.display());
    KillOnDrop(child)
}

/// Path of a workload script in tests/workloads.
pub fn workload(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads").join(name)
}

/// Starts `python script args...` (the workload `name`, as `interp` sees it) and waits for it
/// to print "ready".
pub fn start_ready(interp: &Interpreter, name: &str, args: &[&str]) -> KillOnDrop {
    let script = interp.workload(name);
    let mut child = interp
        .command()
        .arg(&script)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", interp.label));
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "{} did not start", script.display());
    KillOnDrop(child)
}

/// 1-based line of the line containing `marker` in `script`.
pub fn line_of(script: &Path, marker: &str) -> i64 {
    let text = std::fs::read_to_string(script).unwrap();
    let hits: Vec<usize> = text.lines().enumerate().filter(|(_, l)| l.contains(marker)).map(|(i, _)| i + 1).collect();
    assert_eq!(hits.len(), 1, "marker {marker:?} must appear once in {}", script.display());
    hits[0] as i64
}

/// One expected Python frame: function name, and the allowed line range.
#[derive(Debug, Clone)]
pub struct Expect {
    pub function: String,
    pub lines: std::ops::RangeInclusive<i64>,
}

impl Expect {
    pub fn at(function: &str, line: i64) -> Self {
        Self { function: function.to_string(), lines: line..=line }
    }
}

/// Does a stack's `python_frames` hold `chain` as consecutive frames of `file`?
pub fn has_chain(stack: &Value, file: &Path, chain: &[Expect]) -> bool {
    let frames = stack["python_frames"].as_array().unwrap();
    let file = file.to_str().unwrap();
    frames.windows(chain.len()).any(|w| {
        w.iter().zip(chain).all(|(f, e)| {
            f["file"] == file
                && f["function"] == e.function.as_str()
                && f["line"].as_i64().is_some_and(|l| e.lines.contains(&l))
        })
    })
}

/// On-CPU samples of `process` (optionally of one thread) whose stack satisfies `pred`, and all.
pub fn count(process: &Value, tid: Option<u64>, pred: impl Fn(&Value) -> bool) -> (u64, u64) {
    let mut matching = 0;
    let mut total = 0;
    for s in process["stacks"].as_array().unwrap().iter().filter(|s| s["category"] == "cpu") {
        if tid.is_some_and(|t| s["tid"].as_u64() != Some(t)) {
            continue;
        }
        let n = s["samples"].as_u64().unwrap();
        total += n;
        if pred(s) {
            matching += n;
        }
    }
    (matching, total)
}

/// Runs `check` on every interpreter and fails once with every version's failure listed, so one
/// failing version does not hide the others.
pub fn for_each_interpreter(what: &str, mut check: impl FnMut(&Interpreter) -> Result<(), String>) {
    let failures: Vec<String> =
        interpreters().iter().filter_map(|i| check(i).err().map(|e| format!("{}: {e}", i.label))).collect();
    assert!(failures.is_empty(), "{what} failed on:\n{}", failures.join("\n"));
}

/// The C extension of tests/workloads/native_ext.py, built without frame pointers against the
/// limited API (one build for every CPython 3.8+ with a GIL; free-threaded builds load no abi3
/// modules, so they get their own build, which declares that it does not need the GIL).
const NATIVEEXT_C: &str = r#"
#ifndef NATIVEEXT_FREE_THREADED
#define Py_LIMITED_API 0x03080000
#endif
#include <Python.h>
static volatile unsigned long sink;
__attribute__((noinline)) static void ext_spin_inner(long n) { for (long i = 0; i < n; i++) sink += i * i; }
__attribute__((noinline)) static void ext_spin(long n) { ext_spin_inner(n); sink++; }
__attribute__((noinline)) static PyObject *ext_middle(PyObject *cb) { PyObject *r = PyObject_CallObject(cb, NULL); sink++; return r; }
__attribute__((noinline)) static PyObject *ext_call_through(PyObject *cb) { PyObject *r = ext_middle(cb); sink++; return r; }
static PyObject *py_call_through(PyObject *self, PyObject *cb) { (void)self; PyObject *r = ext_call_through(cb); sink++; return r; }
static PyObject *py_spin(PyObject *self, PyObject *arg) { (void)self; ext_spin(PyLong_AsLong(arg)); sink++; Py_RETURN_NONE; }
static PyMethodDef methods[] = {
    {"call_through", py_call_through, METH_O, 0},
    {"spin", py_spin, METH_O, 0},
    {0, 0, 0, 0},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "nativeext", 0, -1, methods, 0, 0, 0, 0};
PyMODINIT_FUNC PyInit_nativeext(void) {
    PyObject *m = PyModule_Create(&module);
#ifdef Py_GIL_DISABLED
    if (m) PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED);
#endif
    return m;
}
"#;

/// Builds the extension `interp` loads: for interpreters with a GIL, one abi3 build with the oldest
/// pyenv CPython's headers (the limited API of 3.8); for a free-threaded one, a build against its
/// own headers, named `nativeext.so` (the suffix every build accepts).
pub fn native_extension(interp: &Interpreter) -> PathBuf {
    if interp.free_threaded {
        let prefix = interp.path.parent().and_then(|bin| bin.parent()).expect("interpreter under PREFIX/bin");
        let headers = prefix.join(format!("include/python3.{}t", interp.minor));
        assert!(headers.join("Python.h").exists(), "no CPython headers at {}", headers.display());
        let inc = format!("-I{}", headers.display());
        let flags = ["-O2", "-fomit-frame-pointer", "-shared", "-fPIC", "-DNATIVEEXT_FREE_THREADED", &inc];
        return crate::c_program_with("nativeext.so", NATIVEEXT_C, &flags);
    }
    native_extension_abi3()
}

/// The abi3 build of the extension, loadable by every CPython 3.8+ with a GIL.
pub fn native_extension_abi3() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_default();
    let include = PathBuf::from(home).join(".pyenv/versions");
    let headers = std::fs::read_dir(&include)
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path())
        .filter_map(|d| {
            let name = d.file_name()?.to_string_lossy().into_owned();
            let minor: u32 = name.strip_prefix("3.")?.split('.').next()?.parse().ok()?;
            let h = d.join(format!("include/python3.{minor}"));
            (minor >= 8 && h.join("Python.h").exists()).then_some((minor, h))
        })
        .min()
        .map(|(_, h)| h)
        .or_else(|| Some(PathBuf::from("/usr/include/python3.11")).filter(|h| h.join("Python.h").exists()))
        .expect("CPython headers to build the test extension");
    let inc = format!("-I{}", headers.display());
    crate::c_program_with("nativeext.abi3.so", NATIVEEXT_C, &["-O2", "-fomit-frame-pointer", "-shared", "-fPIC", &inc])
}
