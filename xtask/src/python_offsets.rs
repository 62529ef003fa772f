//! `cargo xtask gen-python-offsets`: regenerates the per-version CPython layout
//! table (`profiler/src/python/offsets_generated.rs`).
//!
//! The profiler must work on stripped interpreters, so it cannot read DWARF at
//! run time. Instead, for every CPython minor version installed under pyenv, this
//! compiles `python_offsets_probe.c` against that version's own (internal)
//! headers, runs it, and commits the `offsetof` results it prints. Only the
//! layout of the headers matters, so any patch release of a minor version will
//! do; the highest installed one is used. When the install has a shared
//! libpython the probe is linked against it and also reads live objects back
//! through the printed layout (see `check_live_layouts` in the probe).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};

const PROBE_SOURCE: &str = include_str!("python_offsets_probe.c");

/// CPython 3.minor versions the table covers.
const MINORS: std::ops::RangeInclusive<u8> = 8..=13;

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

/// A pyenv install of one minor version.
struct Install {
    /// Full version, e.g. "3.8.18" (also the directory name).
    version: String,
    minor: u8,
    prefix: PathBuf,
}

impl Install {
    fn include_dir(&self) -> PathBuf {
        self.prefix.join(format!("include/python3.{}", self.minor))
    }

    fn has_headers(&self) -> bool {
        let include = self.include_dir();
        include.join("Python.h").is_file() && include.join("internal").is_dir()
    }
}

/// What the probe printed for one version.
struct Probed {
    install: Install,
    /// In `FIELDS` order.
    values: Vec<i64>,
    /// The probe's `# ...` lines (e.g. the 3.13 `_Py_DebugOffsets` cross-check),
    /// carried into the generated file.
    notes: Vec<String>,
}

/// Probes every installed version and writes the table to `out`. Nothing is
/// written unless every found version probes cleanly.
pub fn generate(out: &Path) -> Result<()> {
    let versions_dir = pyenv_versions_dir()?;
    let scratch = ScratchDir::new()?;
    let probe_source = scratch.path.join("python_offsets_probe.c");
    fs::write(&probe_source, PROBE_SOURCE)
        .with_context(|| format!("writing {}", probe_source.display()))?;

    let mut probed = Vec::new();
    let mut missing = Vec::new();
    for minor in MINORS {
        match find_install(&versions_dir, minor)? {
            Some(install) => {
                let version = install.version.clone();
                let result = probe(install, &probe_source, &scratch.path)
                    .with_context(|| format!("probing CPython {version}"))?;
                eprintln!("probed CPython {version}");
                probed.push(result);
            }
            None => missing.push(format!("3.{minor}")),
        }
    }
    ensure!(
        !probed.is_empty(),
        "no CPython 3.{}..=3.{} with headers under {}",
        MINORS.start(),
        MINORS.end(),
        versions_dir.display()
    );

    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(out, render(&probed, &missing))
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
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
        let Some(patch) = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let install = Install {
            version: name,
            minor,
            prefix: entry.path(),
        };
        if install.has_headers() && best.as_ref().is_none_or(|(b, _)| patch > *b) {
            best = Some((patch, install));
        }
    }
    Ok(best.map(|(_, install)| install))
}

fn probe(install: Install, source: &Path, scratch: &Path) -> Result<Probed> {
    let include = install.include_dir();
    let exe = scratch.join(format!("probe-3.{}", install.minor));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let mut cmd = Command::new(&cc);
    cmd.arg("-DPy_BUILD_CORE")
        .arg("-I")
        .arg(&include)
        .arg("-I")
        .arg(include.join("internal"))
        .arg(source)
        .arg("-o")
        .arg(&exe);
    // Linked against the real library, the probe checks the dict, instance,
    // int and module layouts against live objects (the only check the structs
    // it has to mirror for 3.8-3.10 get), and 3.13+ also against the
    // _Py_DebugOffsets the library was built with. Without a shared libpython
    // it still probes, and says in a note what went unchecked.
    let lib_dir = install.prefix.join("lib");
    let libpython = lib_dir.join(format!("libpython3.{}.so", install.minor));
    if libpython.exists() {
        cmd.arg("-DPROBE_LINKED_LIBPYTHON")
            .arg("-L")
            .arg(&lib_dir)
            .arg(format!("-lpython3.{}", install.minor))
            .arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    }
    let compiled = cmd.output().with_context(|| format!("running {cc}"))?;
    if !compiled.status.success() {
        bail!(
            "the offset probe does not compile against {} ({}):\n{:?}\n{}",
            include.display(),
            compiled.status,
            cmd,
            String::from_utf8_lossy(&compiled.stderr)
        );
    }

    let ran = Command::new(&exe)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !ran.status.success() {
        bail!(
            "the offset probe failed ({}):\n{}",
            ran.status,
            String::from_utf8_lossy(&ran.stderr)
        );
    }
    let stdout = String::from_utf8(ran.stdout).context("probe output is not UTF-8")?;
    let (values, notes) = parse_probe_output(&stdout, install.minor)?;
    Ok(Probed {
        install,
        values,
        notes,
    })
}

/// Checks the probe reported on the version it was meant to and printed every
/// field exactly once, and nothing unexpected.
fn parse_probe_output(stdout: &str, minor: u8) -> Result<(Vec<i64>, Vec<String>)> {
    let mut seen: HashMap<&str, i64> = HashMap::new();
    let mut notes = Vec::new();
    let mut version_hex = None;
    for line in stdout.lines() {
        if let Some(note) = line.strip_prefix('#') {
            notes.push(note.trim().to_owned());
            continue;
        }
        let (name, value) = line
            .split_once(' ')
            .with_context(|| format!("malformed probe line {line:?}"))?;
        let value: i64 = value
            .parse()
            .with_context(|| format!("malformed probe line {line:?}"))?;
        if name == "py_version_hex" {
            version_hex = Some(value);
            continue;
        }
        ensure!(
            FIELDS.contains(&name),
            "probe printed unknown field {name:?}"
        );
        ensure!(
            seen.insert(name, value).is_none(),
            "probe printed {name:?} twice"
        );
    }

    let hex = version_hex.context("probe did not print py_version_hex")?;
    let (got_major, got_minor) = ((hex >> 24) & 0xff, (hex >> 16) & 0xff);
    ensure!(
        (got_major, got_minor) == (3, i64::from(minor)),
        "probe compiled against {got_major}.{got_minor} headers, expected 3.{minor}"
    );
    let values = FIELDS
        .iter()
        .map(|field| {
            seen.get(field)
                .copied()
                .with_context(|| format!("probe did not print {field:?}"))
        })
        .collect::<Result<_>>()?;
    Ok((values, notes))
}

/// Lays the table out the way rustfmt would, so the committed file stays
/// rustfmt-clean without running rustfmt here.
fn render(probed: &[Probed], missing: &[String]) -> String {
    let mut s = String::new();
    s.push_str(
        "// @generated by `cargo xtask gen-python-offsets` from CPython's headers; do not edit.\n",
    );
    s.push_str("//\n");
    let versions: Vec<&str> = probed.iter().map(|p| p.install.version.as_str()).collect();
    let _ = writeln!(s, "// Probed: {}.", versions.join(", "));
    if missing.is_empty() {
        s.push_str("// Not found (no pyenv install with headers): none.\n");
    } else {
        let _ = writeln!(
            s,
            "// Not found (no pyenv install with headers): {}.",
            missing.join(", ")
        );
    }
    for note in probed.iter().flat_map(|p| &p.notes) {
        let _ = writeln!(s, "// {note}");
    }
    s.push_str("\nuse super::offsets::PyOffsets;\n\n");
    s.push_str("pub const TABLE: &[((u8, u8), PyOffsets)] = &[\n");
    for p in probed {
        let _ = writeln!(s, "    // {}", p.install.version);
        s.push_str("    (\n");
        let _ = writeln!(s, "        (3, {}),", p.install.minor);
        s.push_str("        PyOffsets {\n");
        for (field, value) in FIELDS.iter().zip(&p.values) {
            let _ = writeln!(s, "            {field}: {value},");
        }
        s.push_str("        },\n");
        s.push_str("    ),\n");
    }
    s.push_str("];\n");
    s
}

/// A private scratch directory, removed again however generation ends.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new() -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "pyebpf-python-offsets-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
