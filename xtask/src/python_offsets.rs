//! `cargo xtask gen-python-offsets [--root DIR]...`: regenerates the
//! per-version CPython layout table (`profiler/src/python/offsets_generated.rs`).
//!
//! The profiler must work on stripped interpreters, so it cannot read DWARF at
//! run time. Instead, for every CPython minor version found, this compiles
//! `python_offsets_probe.c` against that version's own (internal) headers, runs
//! it, and commits the `offsetof` results it prints. Only the layout of the
//! headers matters, so any patch release of a minor version will do.
//!
//! Versions come from pyenv (the highest patch release of each minor that has
//! its headers) and, for minors pyenv lacks, from OS roots: a distribution's
//! file tree (a chroot, a container image unpacked) whose
//! `usr/include/python3.X` holds the headers (Debian: `libpython3.X-dev`). In a
//! root the probe is compiled and run inside it through chroot(2), with the
//! root's own C compiler, so it builds against the root's libc and runs against
//! its libpython. `target/test-roots/sid` (made by `cargo xtask setup-pythons
//! --dev`) is used when present. When the install has a shared libpython the
//! probe is linked against it and also reads live objects back through the
//! printed layout (see `check_live_layouts` in the probe).
//!
//! Free-threaded builds (3.13+, `Py_GIL_DISABLED`) have their own layout (object
//! headers, code objects, frames with a bytecode index) and their own table
//! entries. They are probed like pyenv installs from the builds `cargo xtask
//! setup-pythons` makes under `target/pythons/3.Xt`; for a minor without such a
//! build, from a root's GIL-build headers compiled with `-DPy_GIL_DISABLED=1`
//! (each layout difference is an `#ifdef` on that macro), which cannot be
//! checked against a live library and says so in the generated file.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};

const PROBE_SOURCE: &str = include_str!("python_offsets_probe.c");

/// CPython 3.minor versions the table covers.
const MINORS: std::ops::RangeInclusive<u8> = 8..=15;
/// Minor versions with a free-threaded build (`--disable-gil`, PEP 703).
const FREE_THREADED_MINORS: std::ops::RangeInclusive<u8> = 13..=15;

/// The OS root `cargo xtask setup-pythons` makes (relative to the workspace).
pub const TEST_ROOT: &str = "target/test-roots/sid";

/// `PyOffsets` fields, in declaration order (profiler/src/python/offsets.rs).
/// The probe must print each of them exactly once; a field added there has to be
/// added here and to the probe, or the generated file will not compile.
const FIELDS: &[&str] = &[
    "runtime_interpreters_head",
    "interp_threads_head",
    "interp_next",
    "tstate_next",
    "tstate_interp",
    "tstate_thread_id",
    "tstate_native_thread_id",
    "tstate_frame",
    "cframe_current_frame",
    "frame_previous",
    "frame_code",
    "frame_lasti",
    "frame_lasti_size",
    "frame_instr_ptr",
    "frame_owner",
    "frame_owned_by_cstack",
    "frame_owned_by_generator",
    "frame_owned_by_interpreter",
    "frame_code_tag_bits",
    "code_code_adaptive",
    "code_firsttraceable",
    "code_firstlineno",
    "code_name",
    "code_qualname",
    "code_filename",
    "code_linetable",
    "code_argcount",
    "code_flags",
    "code_size_of",
    "code_units",
    "code_tlbc",
    "code_array_size",
    "code_array_entries",
    "frame_tlbc_index",
    "free_threaded",
    "object_type",
    "type_name",
    "bytes_size",
    "bytes_data",
    "unicode_length",
    "unicode_state",
    "unicode_ascii_data",
    "unicode_compact_data",
    "unicode_kind_shift",
    "unicode_kind_mask",
    "unicode_compact_shift",
    "unicode_ascii_shift",
    "interp_modules",
    "module_dict",
    "type_flags",
    "type_dictoffset",
    "heap_type_cached_keys",
    "type_flag_heaptype",
    "type_flag_long_subclass",
    "type_flag_unicode_subclass",
    "type_flag_dict_subclass",
    "type_flag_managed_dict",
    "type_flag_inline_values",
    "object_managed_dict_before",
    "object_managed_values_before",
    "object_managed_values_tag",
    "object_inline_values",
    "dict_used",
    "dict_keys",
    "dict_values",
    "dict_values_array",
    "dict_values_capacity",
    "dict_values_valid",
    "dict_keys_size",
    "dict_keys_log2_size",
    "dict_keys_log2_index_bytes",
    "dict_keys_kind",
    "dict_keys_kind_general",
    "dict_keys_nentries",
    "dict_keys_indices",
    "dict_entry_size",
    "dict_entry_key",
    "dict_entry_value",
    "dict_unicode_entry_size",
    "dict_unicode_entry_key",
    "dict_unicode_entry_value",
    "long_size",
    "long_tag",
    "long_tag_sign_mask",
    "long_tag_size_shift",
    "long_digits",
    "long_digit_bits",
    "runtime_ceval_gil",
    "interp_ceval_gil",
    "gil_size",
    "gil_locked",
    "gil_last_holder",
];

/// Where one minor version's headers come from.
#[derive(Debug, Clone)]
enum Source {
    /// An install in its own prefix: pyenv's `~/.pyenv/versions/3.X.Y`, or a free-threaded
    /// build under `target/pythons/3.Xt`.
    Pyenv { prefix: PathBuf },
    /// An OS root with the headers under `usr/include/python3.X`; `os` names
    /// the distribution (from its os-release) for the generated file.
    Root { root: PathBuf, os: String },
}

/// One minor version to probe.
#[derive(Debug, Clone)]
struct Install {
    /// Full version as far as known before probing, e.g. "3.8.18" (pyenv: the
    /// directory name); for a root, "3.X" until the probe says.
    version: String,
    minor: u8,
    /// A free-threaded build's layout (`Py_GIL_DISABLED`).
    free_threaded: bool,
    source: Source,
}

impl Install {
    /// The include directory as seen from where the compiler runs (inside the
    /// root for a root).
    fn include_dir(&self) -> PathBuf {
        match &self.source {
            Source::Pyenv { prefix } => prefix.join(format!("include/python3.{}{}", self.minor, self.abi())),
            // A root's headers are its GIL build's (see `headers_only_free_threaded`).
            Source::Root { .. } => PathBuf::from(format!("/usr/include/python3.{}", self.minor)),
        }
    }

    /// "t" for a free-threaded build (its headers' directory, library and executable).
    fn abi(&self) -> &'static str {
        if self.free_threaded { "t" } else { "" }
    }

    /// A free-threaded layout probed from a GIL build's headers with `Py_GIL_DISABLED` defined:
    /// nothing to link against or check live.
    fn headers_only_free_threaded(&self) -> bool {
        self.free_threaded && matches!(self.source, Source::Root { .. })
    }

    /// Where the headers are from here.
    fn host_include_dir(&self) -> PathBuf {
        match &self.source {
            Source::Pyenv { .. } => self.include_dir(),
            Source::Root { root, .. } => root.join(format!("usr/include/python3.{}", self.minor)),
        }
    }

    fn has_headers(&self) -> bool {
        let include = self.host_include_dir();
        include.join("Python.h").is_file() && include.join("internal").is_dir()
    }

    /// How the generated file names it.
    fn label(&self) -> String {
        match &self.source {
            Source::Pyenv { .. } => format!("{}{}", self.version, self.abi()),
            Source::Root { os, .. } if self.free_threaded => {
                format!("{}t (headers of the OS root {os} with Py_GIL_DISABLED)", self.version)
            }
            Source::Root { os, .. } => format!("{} (OS root: {os})", self.version),
        }
    }
}

/// What the probe printed for one version.
struct Probed {
    install: Install,
    /// In `FIELDS` order.
    values: Vec<i64>,
    /// 3.13+: `sizeof(_Py_DebugOffsets)` and where each field mapped to it is.
    debug: Option<DebugMap>,
    /// The probe's `# ...` lines (e.g. the 3.13 `_Py_DebugOffsets` cross-check),
    /// carried into the generated file.
    notes: Vec<String>,
}

/// Where a 3.13+ process's `_Py_DebugOffsets` holds `PyOffsets` fields.
#[derive(Debug)]
struct DebugMap {
    size: i64,
    /// (field, offset of its member, offset of a member to subtract or -1).
    fields: Vec<(String, i64, i64)>,
}

/// Probes every version found and writes the table to `out`. Nothing is
/// written unless every found version probes cleanly. `roots` are OS roots to
/// look in (after pyenv), besides the test root when it exists.
pub fn generate(workspace: &Path, out: &Path, roots: &[PathBuf]) -> Result<()> {
    let versions_dir = pyenv_versions_dir()?;
    let mut roots = roots.to_vec();
    let test_root = workspace.join(TEST_ROOT);
    if test_root.is_dir() && !roots.iter().any(|r| same_dir(r, &test_root)) {
        roots.push(test_root);
    }
    for root in &roots {
        ensure!(root.join("usr").is_dir(), "{} is not an OS root (no usr/)", root.display());
    }
    let scratch = ScratchDir::new(&std::env::temp_dir())?;
    let probe_source = scratch.path.join("python_offsets_probe.c");
    fs::write(&probe_source, PROBE_SOURCE).with_context(|| format!("writing {}", probe_source.display()))?;

    let mut probed = Vec::new();
    let mut missing = Vec::new();
    let builds = MINORS.map(|minor| (minor, false)).chain(FREE_THREADED_MINORS.map(|minor| (minor, true)));
    for (minor, free_threaded) in builds {
        let found = if free_threaded {
            find_free_threaded_build(workspace, minor).or_else(|| find_in_roots(&roots, minor, true))
        } else {
            match find_install(&versions_dir, minor)? {
                Some(install) => Some(install),
                None => find_in_roots(&roots, minor, false),
            }
        };
        match found {
            Some(install) => {
                let label = install.label();
                let result = match &install.source {
                    Source::Pyenv { .. } => probe(install, &probe_source, &scratch.path),
                    Source::Root { .. } => probe_in_root(install),
                }
                .with_context(|| format!("probing CPython {label}"))?;
                eprintln!("probed CPython {}", result.install.label());
                probed.push(result);
            }
            None => missing.push(format!("3.{minor}{}", if free_threaded { "t" } else { "" })),
        }
    }
    probed.sort_by_key(|p| (p.install.minor, p.install.free_threaded));
    ensure!(
        !probed.is_empty(),
        "no CPython 3.{}..=3.{} with headers under {} or in an OS root",
        MINORS.start(),
        MINORS.end(),
        versions_dir.display()
    );

    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(out, render(&probed, &missing)).with_context(|| format!("writing {}", out.display()))?;
    // The workspace's rustfmt.toml decides the layout, so the committed file stays format-clean.
    crate::util::run(Command::new("rustfmt").args(["--edition", "2024"]).arg(out))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn pyenv_versions_dir() -> Result<PathBuf> {
    let root = match std::env::var_os("PYENV_ROOT") {
        Some(root) => PathBuf::from(root),
        None => {
            let home = std::env::var_os("HOME").context("neither PYENV_ROOT nor HOME is set")?;
            Path::new(&home).join(".pyenv")
        }
    };
    Ok(root.join("versions"))
}

/// The highest `3.<minor>.<patch>` install that ships its headers. Names with a
/// suffix (`3.13.0t` free-threaded builds, `-dev` trees) are skipped: their
/// layout differs from the release builds the table describes.
fn find_install(versions_dir: &Path, minor: u8) -> Result<Option<Install>> {
    let entries = match fs::read_dir(versions_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("listing {}", versions_dir.display())),
    };
    let prefix = format!("3.{minor}.");
    let mut best: Option<(u32, Install)> = None;
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(patch) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let install =
            Install { version: name, minor, free_threaded: false, source: Source::Pyenv { prefix: entry.path() } };
        if install.has_headers() && best.as_ref().is_none_or(|(b, _)| patch > *b) {
            best = Some((patch, install));
        }
    }
    Ok(best.map(|(_, install)| install))
}

/// The first root with `3.<minor>`'s headers (the GIL build's; with `free_threaded`,
/// probed with `Py_GIL_DISABLED` defined).
fn find_in_roots(roots: &[PathBuf], minor: u8, free_threaded: bool) -> Option<Install> {
    roots.iter().find_map(|root| {
        let install = Install {
            version: format!("3.{minor}"),
            minor,
            free_threaded,
            source: Source::Root { root: root.clone(), os: os_name(root) },
        };
        install.has_headers().then_some(install)
    })
}

/// The free-threaded 3.`minor` that `cargo xtask setup-pythons` built under `target/pythons`.
fn find_free_threaded_build(workspace: &Path, minor: u8) -> Option<Install> {
    let prefix = workspace.join(crate::cpython_build::DIR).join(format!("3.{minor}t"));
    let install = Install {
        version: format!("3.{minor}"),
        minor,
        free_threaded: true,
        source: Source::Pyenv { prefix: prefix.clone() },
    };
    (prefix.join(crate::cpython_build::READY_MARKER).exists() && install.has_headers()).then_some(install)
}

/// `PRETTY_NAME` from a root's os-release, e.g. "Debian GNU/Linux forky/sid".
fn os_name(root: &Path) -> String {
    ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .filter_map(|p| fs::read_to_string(root.join(p)).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
                .collect::<Vec<_>>()
        })
        .next()
        .unwrap_or_else(|| "unknown OS".to_owned())
}

fn probe(install: Install, source: &Path, scratch: &Path) -> Result<Probed> {
    let include = install.include_dir();
    let Source::Pyenv { prefix } = &install.source else {
        bail!("not a pyenv install");
    };
    let exe = scratch.join(format!("probe-3.{}", install.minor));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let mut cmd = Command::new(&cc);
    cmd.args(compile_args(&include, source, &exe));
    // Linked against the real library, the probe checks the dict, instance,
    // int and module layouts against live objects (the only check the structs
    // it has to mirror for 3.8-3.10 get), and 3.13+ also against the
    // _Py_DebugOffsets the library was built with. Without a shared libpython
    // it still probes, and says in a note what went unchecked.
    let lib_dir = prefix.join("lib");
    let libpython = lib_dir.join(format!("libpython3.{}{}.so", install.minor, install.abi()));
    if libpython.exists() {
        cmd.args(link_args(&install)).arg("-L").arg(&lib_dir).arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    }
    compile(&mut cmd, &include)?;
    let stdout = run_probe(&mut Command::new(&exe))?;
    parse_probe(install, &stdout)
}

/// Compiles and runs the probe inside an OS root with the root's compiler
/// (`cc`), linked against the root's libpython when it has the shared one.
fn probe_in_root(install: Install) -> Result<Probed> {
    let Source::Root { root, .. } = install.source.clone() else {
        bail!("not an OS root");
    };
    crate::util::require_root("probing headers inside an OS root runs the compiler through chroot")?;
    let in_root = |args: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new("chroot");
        cmd.arg(&root).args(args).env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        cmd
    };
    let has_cc =
        in_root(&["sh".as_ref(), "-c".as_ref(), "command -v cc".as_ref()]).output().is_ok_and(|o| o.status.success());
    ensure!(
        has_cc,
        "{} has CPython 3.{} headers but no C compiler: `cargo xtask setup-pythons --dev` \
         installs one in the test root (for another root: `chroot ROOT apt-get install gcc`)",
        root.display(),
        install.minor
    );
    let scratch = ScratchDir::new(&root.join("tmp"))?;
    let inside = Path::new("/tmp").join(scratch.path.file_name().context("scratch name")?);
    fs::write(scratch.path.join("python_offsets_probe.c"), PROBE_SOURCE)?;
    let exe = inside.join("probe");
    let include = install.include_dir();
    let mut args: Vec<std::ffi::OsString> = vec!["cc".into()];
    args.extend(compile_args(&include, &inside.join("python_offsets_probe.c"), &exe));
    if install.headers_only_free_threaded() {
        args.push("-DPy_GIL_DISABLED=1".into());
    } else if glob_one(&root.join("usr/lib"), &format!("libpython3.{}.so", install.minor)) {
        // Debian puts the shared library in a multiarch directory the compiler
        // searches by itself.
        args.extend(link_args(&install));
    }
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    compile(&mut in_root(&args), &include)?;
    let stdout = run_probe(&mut in_root(&[exe.as_os_str()]))?;
    parse_probe(install, &stdout)
}

/// Is there a file `name` in `dir` or one directory below it?
fn glob_one(dir: &Path, name: &str) -> bool {
    if dir.join(name).exists() {
        return true;
    }
    fs::read_dir(dir).into_iter().flatten().flatten().any(|e| e.path().join(name).exists())
}

fn compile_args(include: &Path, source: &Path, exe: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "-DPy_BUILD_CORE".into(),
        "-I".into(),
        include.into(),
        "-I".into(),
        include.join("internal").into(),
        source.into(),
        "-o".into(),
        exe.into(),
    ]
}

fn link_args(install: &Install) -> Vec<std::ffi::OsString> {
    vec!["-DPROBE_LINKED_LIBPYTHON".into(), format!("-lpython3.{}{}", install.minor, install.abi()).into()]
}

fn compile(cmd: &mut Command, include: &Path) -> Result<()> {
    let compiled = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !compiled.status.success() {
        bail!(
            "the offset probe does not compile against {} ({}):\n{:?}\n{}",
            include.display(),
            compiled.status,
            cmd,
            String::from_utf8_lossy(&compiled.stderr)
        );
    }
    Ok(())
}

fn run_probe(cmd: &mut Command) -> Result<String> {
    let ran = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !ran.status.success() {
        bail!("the offset probe failed ({}):\n{}", ran.status, String::from_utf8_lossy(&ran.stderr));
    }
    String::from_utf8(ran.stdout).context("probe output is not UTF-8")
}

fn parse_probe(mut install: Install, stdout: &str) -> Result<Probed> {
    let parsed = parse_probe_output(stdout, install.minor)?;
    let free_threaded = FIELDS.iter().position(|f| *f == "free_threaded").map(|i| parsed.values[i] == 1);
    ensure!(
        free_threaded == Some(install.free_threaded),
        "the probe compiled against {} says free_threaded = {free_threaded:?}",
        install.label()
    );
    if matches!(install.source, Source::Root { .. }) || install.free_threaded {
        install.version = parsed.version;
    }
    Ok(Probed { install, values: parsed.values, debug: parsed.debug, notes: parsed.notes })
}

struct ProbeOutput {
    /// "3.X.Y" (with the release level when not final) from `PY_VERSION_HEX`.
    version: String,
    values: Vec<i64>,
    debug: Option<DebugMap>,
    notes: Vec<String>,
}

/// "3.14.10", "3.15.0a1" from a `PY_VERSION_HEX`.
fn version_from_hex(hex: i64) -> String {
    let (major, minor, micro) = ((hex >> 24) & 0xff, (hex >> 16) & 0xff, (hex >> 8) & 0xff);
    let serial = hex & 0xf;
    let level = match (hex >> 4) & 0xf {
        0xa => format!("a{serial}"),
        0xb => format!("b{serial}"),
        0xc => format!("rc{serial}"),
        _ => String::new(),
    };
    format!("{major}.{minor}.{micro}{level}")
}

/// Checks the probe reported on the version it was meant to and printed every
/// field exactly once, and nothing unexpected.
fn parse_probe_output(stdout: &str, minor: u8) -> Result<ProbeOutput> {
    let mut seen: HashMap<&str, i64> = HashMap::new();
    let mut notes = Vec::new();
    let mut version_hex = None;
    let mut debug_size = None;
    let mut debug_fields: Vec<(String, i64, i64)> = Vec::new();
    for line in stdout.lines() {
        if let Some(note) = line.strip_prefix('#') {
            notes.push(note.trim().to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("debug ") {
            let parts: Vec<&str> = rest.split(' ').collect();
            let [name, at, base] = parts[..] else {
                bail!("malformed probe line {line:?}");
            };
            ensure!(FIELDS.contains(&name), "probe mapped unknown field {name:?}");
            ensure!(!debug_fields.iter().any(|(n, _, _)| n == name), "probe mapped {name:?} twice");
            let number = |v: &str| v.parse::<i64>().with_context(|| format!("malformed probe line {line:?}"));
            debug_fields.push((name.to_owned(), number(at)?, number(base)?));
            continue;
        }
        let (name, value) = line.split_once(' ').with_context(|| format!("malformed probe line {line:?}"))?;
        let value: i64 = value.parse().with_context(|| format!("malformed probe line {line:?}"))?;
        match name {
            "py_version_hex" => version_hex = Some(value),
            "debug_size" => debug_size = Some(value),
            _ => {
                ensure!(FIELDS.contains(&name), "probe printed unknown field {name:?}");
                ensure!(seen.insert(name, value).is_none(), "probe printed {name:?} twice");
            }
        }
    }

    let hex = version_hex.context("probe did not print py_version_hex")?;
    let (got_major, got_minor) = ((hex >> 24) & 0xff, (hex >> 16) & 0xff);
    ensure!(
        (got_major, got_minor) == (3, i64::from(minor)),
        "probe compiled against {got_major}.{got_minor} headers, expected 3.{minor}"
    );
    let values = FIELDS
        .iter()
        .map(|field| seen.get(field).copied().with_context(|| format!("probe did not print {field:?}")))
        .collect::<Result<_>>()?;
    let debug = match debug_size {
        Some(size) => {
            ensure!(!debug_fields.is_empty(), "probe printed debug_size but no field map");
            Some(DebugMap { size, fields: debug_fields })
        }
        None => {
            ensure!(debug_fields.is_empty(), "probe mapped fields without debug_size");
            None
        }
    };
    Ok(ProbeOutput { version: version_from_hex(hex), values, debug, notes })
}

/// The table as Rust source; `generate` runs rustfmt over it.
fn render(probed: &[Probed], missing: &[String]) -> String {
    let mut s = String::new();
    s.push_str("// @generated by `cargo xtask gen-python-offsets` from CPython's headers; do not edit.\n");
    s.push_str("//\n");
    let versions: Vec<String> = probed.iter().map(|p| p.install.label()).collect();
    let _ = writeln!(s, "// Probed: {}.", versions.join(", "));
    if missing.is_empty() {
        s.push_str("// Not found (no pyenv install or OS root with headers): none.\n");
    } else {
        let _ = writeln!(s, "// Not found (no pyenv install or OS root with headers): {}.", missing.join(", "));
    }
    for note in probed.iter().flat_map(|p| &p.notes) {
        let _ = writeln!(s, "// {note}");
    }
    for p in probed.iter().filter(|p| p.install.headers_only_free_threaded()) {
        let _ = writeln!(
            s,
            "// {}.{}t: from the GIL build's headers with Py_GIL_DISABLED defined (no free-threaded build to \
             link against): checked only against each process's own _Py_DebugOffsets",
            3, p.install.minor
        );
    }
    s.push_str("\nuse super::offsets::{DebugField, DebugLayout, PyOffsets};\n\n");
    s.push_str("/// (major, minor, free-threaded) → layout.\n");
    s.push_str("pub const TABLE: &[((u8, u8, bool), PyOffsets)] = &[\n");
    for p in probed {
        let _ = writeln!(s, "    // {}", p.install.label());
        s.push_str("    (\n");
        let _ = writeln!(s, "        (3, {}, {}),", p.install.minor, p.install.free_threaded);
        s.push_str("        PyOffsets {\n");
        for (field, value) in FIELDS.iter().zip(&p.values) {
            let _ = writeln!(s, "            {field}: {value},");
        }
        s.push_str("        },\n");
        s.push_str("    ),\n");
    }
    s.push_str("];\n");

    s.push_str("\n/// Where 3.13+ processes' own `_Py_DebugOffsets` hold `PyOffsets` fields.\n");
    s.push_str("pub const DEBUG_TABLE: &[((u8, u8, bool), DebugLayout)] = &[\n");
    for p in probed {
        let Some(debug) = &p.debug else { continue };
        let _ = writeln!(s, "    // {}", p.install.label());
        s.push_str("    (\n");
        let _ = writeln!(s, "        (3, {}, {}),", p.install.minor, p.install.free_threaded);
        s.push_str("        DebugLayout {\n");
        let _ = writeln!(s, "            size: {},", debug.size);
        s.push_str("            fields: &[\n");
        for (field, at, base) in &debug.fields {
            s.push_str("                DebugField {\n");
            let _ = writeln!(s, "                    name: \"{field}\",");
            let _ = writeln!(s, "                    at: {at},");
            let _ = writeln!(s, "                    base: {base},");
            let _ = writeln!(s, "                    field: |o| &mut o.{field},");
            s.push_str("                },\n");
        }
        s.push_str("            ],\n");
        s.push_str("        },\n");
        s.push_str("    ),\n");
    }
    s.push_str("];\n");
    s
}

/// A private scratch directory (under `parent`), removed again however
/// generation ends.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new(parent: &Path) -> Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!("pyebpf-python-offsets-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_hex() {
        assert_eq!(version_from_hex(0x030e0af0), "3.14.10");
        assert_eq!(version_from_hex(0x030d00f0), "3.13.0");
        assert_eq!(version_from_hex(0x030f00a1), "3.15.0a1");
        assert_eq!(version_from_hex(0x030e00c2), "3.14.0rc2");
    }

    fn probe_lines(minor: u8) -> String {
        let mut out = format!("py_version_hex {}\n", 0x0300_00f0 | (i64::from(minor) << 16));
        for (i, field) in FIELDS.iter().enumerate() {
            out.push_str(&format!("{field} {i}\n"));
        }
        out
    }

    #[test]
    fn probe_output_with_a_debug_map() {
        let mut out = probe_lines(14);
        out.push_str("# a note\ndebug_size 700\ndebug tstate_next 192 -1\ndebug gil_locked 144 128\n");
        let parsed = parse_probe_output(&out, 14).unwrap();
        assert_eq!(parsed.version, "3.14.0");
        assert_eq!(parsed.values.len(), FIELDS.len());
        assert_eq!(parsed.notes, ["a note"]);
        let debug = parsed.debug.unwrap();
        assert_eq!(debug.size, 700);
        assert_eq!(debug.fields, [("tstate_next".to_owned(), 192, -1), ("gil_locked".to_owned(), 144, 128)]);
        assert!(parse_probe_output(&probe_lines(14), 14).unwrap().debug.is_none());
    }

    #[test]
    fn probe_output_is_checked() {
        assert!(parse_probe_output(&probe_lines(13), 14).is_err(), "wrong version");
        let mut unknown = probe_lines(14);
        unknown.push_str("debug_size 8\ndebug no_such_field 0 -1\n");
        assert!(parse_probe_output(&unknown, 14).is_err());
        let mut twice = probe_lines(14);
        twice.push_str("debug_size 8\ndebug tstate_next 0 -1\ndebug tstate_next 8 -1\n");
        assert!(parse_probe_output(&twice, 14).is_err());
        let mut no_size = probe_lines(14);
        no_size.push_str("debug tstate_next 0 -1\n");
        assert!(parse_probe_output(&no_size, 14).is_err());
        let short: String =
            probe_lines(14).lines().filter(|l| !l.starts_with("tstate_next ")).map(|l| format!("{l}\n")).collect();
        assert!(parse_probe_output(&short, 14).is_err(), "a field missing");
    }
}
