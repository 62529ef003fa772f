//! Output files: choosing formats, checking paths before profiling, writing atomically and
//! owner-only (see [`write_with`]).
use std::{
    collections::HashSet,
    io::{BufWriter, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

pub mod dump;
pub mod flamegraph;
pub mod otlp;
pub mod pprof;
pub mod speedscope;
pub mod summary;
pub mod task_summary;

use crate::{
    error::{ExitCode, fatal},
    model::Profile,
};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Interactive flame graph (inferno).
    Svg,
    /// Collapsed stacks, one `frame;frame;frame count` line per stack, root first.
    Folded,
    /// The whole profile as one JSON object.
    Json,
    /// speedscope's file format: one sampled profile per thread.
    Speedscope,
    /// pprof's gzipped protobuf (`go tool pprof`, Pyroscope...): per-category values, labels
    /// for process, thread and wait.
    Pprof,
    /// OpenTelemetry profiles (opentelemetry-proto v1.10.0 `profiles/v1development`): an
    /// `ExportProfilesServiceRequest`, binary protobuf, as an OTLP collector takes it.
    Otlp,
}

impl Format {
    /// The format a path's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        // Two-part extensions first: `x.speedscope.json` is not pyebpf's JSON.
        if name.ends_with(".speedscope.json") {
            return Some(Self::Speedscope);
        }
        if name.ends_with(".pb.gz") {
            return Some(Self::Pprof);
        }
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "svg" => Some(Self::Svg),
            "folded" | "collapsed" => Some(Self::Folded),
            "json" => Some(Self::Json),
            "pprof" => Some(Self::Pprof),
            "otlp" => Some(Self::Otlp),
            _ => None,
        }
    }

    /// The extensions [`Format::from_path`] knows, for error messages.
    pub const EXTENSIONS: &'static str = ".svg, .folded, .json, .speedscope.json, .pb.gz, .pprof or .otlp";

    pub fn describe(self) -> &'static str {
        match self {
            Self::Svg => "flame graph",
            Self::Folded => "folded stacks",
            Self::Json => "JSON profile",
            Self::Speedscope => "speedscope profile",
            Self::Pprof => "pprof profile",
            Self::Otlp => "OTLP profiles request",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub path: PathBuf,
    pub format: Format,
}

/// Resolves each output's format and checks that it can be written, so that a bad path fails
/// before profiling, not after.
pub fn plan(paths: &[PathBuf], format: Option<Format>) -> anyhow::Result<Vec<OutputSpec>> {
    let mut seen = HashSet::new();
    let mut specs = Vec::new();
    for path in paths {
        check_writable(path)?;
        let format = format.or_else(|| Format::from_path(path)).ok_or_else(|| {
            fatal(
                ExitCode::Usage,
                format!(
                    "cannot tell the format of '{}' from its extension: name it {}, or pass --format",
                    path.display(),
                    Format::EXTENSIONS
                ),
            )
        })?;
        if !seen.insert(path.clone()) {
            return Err(fatal(ExitCode::Usage, format!("output '{}' is given twice", path.display())));
        }
        specs.push(OutputSpec { path: path.clone(), format });
    }
    Ok(specs)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// How an output path is written.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// A regular file, new or existing: written to a temporary file beside it, then renamed
    /// over it. Symlinks are resolved first, so a link to the file stays a link.
    File(PathBuf),
    /// An existing device, FIFO or socket, or a descriptor of ours (`/dev/stdout`,
    /// `/dev/null`, a named pipe): written in place. Renaming over it would replace the node
    /// (as root, even `/dev/null`) instead of writing to it.
    Stream(PathBuf),
}

fn destination(path: &Path) -> Destination {
    let own_descriptor = ["/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/self/fd/"]
        .iter()
        .any(|p| path.as_os_str().to_string_lossy().starts_with(p));
    match std::fs::metadata(path) {
        Ok(_) if own_descriptor => Destination::Stream(path.to_path_buf()),
        Ok(m) if !m.is_file() && !m.is_dir() => Destination::Stream(path.to_path_buf()),
        Ok(_) => Destination::File(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())),
        Err(_) => Destination::File(path.to_path_buf()),
    }
}

fn check_writable(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        return Err(fatal(
            ExitCode::Output,
            format!(
                "output '{}' is a directory: give a file name inside it, e.g. {}",
                path.display(),
                path.join("profile.svg").display()
            ),
        ));
    }
    let path = match destination(path) {
        Destination::Stream(stream) => {
            use std::os::unix::fs::FileTypeExt;
            // Opening a FIFO for writing waits for a reader: only check the others.
            if std::fs::metadata(&stream).is_ok_and(|m| m.file_type().is_fifo()) {
                return Ok(());
            }
            std::fs::OpenOptions::new()
                .write(true)
                .open(&stream)
                .map_err(|e| fatal(ExitCode::Output, format!("cannot write '{}': {e}", stream.display())))?;
            return Ok(());
        }
        Destination::File(file) => file,
    };
    let dir = parent_dir(&path);
    if !dir.is_dir() {
        return Err(fatal(
            ExitCode::Output,
            format!("cannot write '{}': directory '{}' does not exist", path.display(), dir.display()),
        ));
    }
    tempfile::Builder::new()
        .prefix(".pyebpf-check-")
        .tempfile_in(dir)
        .map_err(|e| fatal(ExitCode::Output, format!("cannot write '{}': {e}", path.display())))?;
    Ok(())
}

/// Writes one output (see [`write_with`]).
pub fn write(profile: &Profile, spec: &OutputSpec) -> anyhow::Result<()> {
    write_with(&spec.path, |w| render(profile, spec.format, w))
}

/// Mode of a new output file: owner only, as `perf record` writes. Profiles hold every
/// profiled process's command line (tokens, passwords) and code paths.
pub const NEW_FILE_MODE: u32 = 0o600;

/// Writes an output file with what `fill` writes: into a temporary file beside the target,
/// then renamed over it, so a reader never sees a partial file and an interrupted write (or a
/// `fill` that fails) leaves the old file in place. A new file is made [`NEW_FILE_MODE`], owned
/// by the user who ran us through sudo if we were; an existing one keeps its mode (and owner,
/// when we may give it). Devices, FIFOs and our own
/// descriptors (`/dev/stdout`) are written in place.
pub fn write_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let cannot = |e: &dyn std::fmt::Display| fatal(ExitCode::Output, format!("cannot write '{}': {e}", path.display()));
    let file = match destination(path) {
        Destination::Stream(stream) => {
            let f = std::fs::OpenOptions::new().write(true).open(&stream).map_err(|e| cannot(&e))?;
            let mut w = BufWriter::new(f);
            fill(&mut w)?;
            w.flush().map_err(|e| cannot(&e))?;
            return Ok(());
        }
        Destination::File(file) => file,
    };
    // tempfile creates its files 0600.
    let tmp = tempfile::Builder::new().prefix(".pyebpf-").tempfile_in(parent_dir(&file)).map_err(|e| cannot(&e))?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        fill(&mut w)?;
        w.flush()?;
    }
    match std::fs::metadata(&file) {
        Ok(old) => {
            use std::os::unix::fs::MetadataExt;
            // Only root may give a file away; anyone else keeps what they made.
            let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(old.uid()), Some(old.gid()));
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
        }
        Err(_) => {
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(NEW_FILE_MODE))?;
            // Run through sudo (as `cargo xtask run` does for a user): the user who asked for
            // the profile can read it; other users still cannot.
            // SAFETY: geteuid cannot fail.
            let euid = unsafe { libc::geteuid() };
            if let Some((uid, gid)) = sudo_owner(euid, |name| std::env::var(name).ok()) {
                let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid));
            }
        }
    }
    tmp.as_file().sync_all()?;
    tmp.persist(&file).map_err(|e| cannot(&e.error))?;
    Ok(())
}

/// The user and group that ran us through sudo (`SUDO_UID`, `SUDO_GID`), when we run as root
/// because of it: the owner a new output gets.
fn sudo_owner(euid: u32, env: impl Fn(&str) -> Option<String>) -> Option<(u32, u32)> {
    if euid != 0 {
        return None;
    }
    let id = |name: &str| env(name)?.parse::<u32>().ok();
    Some((id("SUDO_UID")?, id("SUDO_GID")?))
}

pub fn render(profile: &Profile, format: Format, w: &mut dyn Write) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *w, profile)?;
            w.write_all(b"\n")?;
        }
        Format::Folded => {
            for line in profile.folded_lines() {
                writeln!(w, "{line}")?;
            }
        }
        Format::Svg => flamegraph::write_svg(profile, w)?,
        Format::Speedscope => speedscope::write(profile, w)?,
        Format::Pprof => pprof::write(profile, w)?,
        Format::Otlp => otlp::write(profile, w)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_extension() {
        use std::path::Path;
        assert_eq!(Format::from_path(Path::new("a/b.svg")), Some(Format::Svg));
        assert_eq!(Format::from_path(Path::new("x.FOLDED")), Some(Format::Folded));
        assert_eq!(Format::from_path(Path::new("x.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("d.json/x.Speedscope.JSON")), Some(Format::Speedscope));
        assert_eq!(Format::from_path(Path::new("speedscope.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("x.pb.gz")), Some(Format::Pprof));
        assert_eq!(Format::from_path(Path::new("x.pprof")), Some(Format::Pprof));
        assert_eq!(Format::from_path(Path::new("x.OTLP")), Some(Format::Otlp));
        assert_eq!(Format::from_path(Path::new("x.gz")), None);
        assert_eq!(Format::from_path(Path::new("x")), None);
        assert_eq!(Format::from_path(Path::new("x.png")), None);
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_files_are_owner_only_and_existing_ones_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.json");
        write_with(&new, |w| Ok(w.write_all(b"one")?)).unwrap();
        assert_eq!((std::fs::read_to_string(&new).unwrap().as_str(), mode(&new)), ("one", 0o600));
        // Whatever the umask.
        // SAFETY: umask cannot fail; other tests creating files meanwhile only get more open
        // modes, which none of them checks.
        let old_umask = unsafe { libc::umask(0) };
        let other = dir.path().join("other.svg");
        write_with(&other, |w| Ok(w.write_all(b"x")?)).unwrap();
        // SAFETY: as above.
        unsafe { libc::umask(old_umask) };
        assert_eq!(mode(&other), 0o600);
        // An existing file keeps its mode, also one more open than ours.
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_with(&new, |w| Ok(w.write_all(b"two")?)).unwrap();
        assert_eq!((std::fs::read_to_string(&new).unwrap().as_str(), mode(&new)), ("two", 0o644));
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_with(&new, |w| Ok(w.write_all(b"three")?)).unwrap();
        assert_eq!(mode(&new), 0o640);
        // A failed render leaves the old file, and no temporary file behind.
        assert!(write_with(&new, |_| anyhow::bail!("render failed")).is_err());
        assert_eq!(std::fs::read_to_string(&new).unwrap(), "three");
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["new.json", "other.svg"]);
    }

    #[test]
    fn new_files_made_under_sudo_belong_to_the_user_who_ran_it() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(sudo_owner(0, env(&[("SUDO_UID", "1000"), ("SUDO_GID", "1001")])), Some((1000, 1001)));
        // Not root (sudo -u someone), not through sudo, or nonsense: whoever we are.
        assert_eq!(sudo_owner(1000, env(&[("SUDO_UID", "1000"), ("SUDO_GID", "1001")])), None);
        assert_eq!(sudo_owner(0, env(&[])), None);
        assert_eq!(sudo_owner(0, env(&[("SUDO_UID", "x"), ("SUDO_GID", "1")])), None);
    }

    #[test]
    fn devices_and_own_descriptors_are_written_in_place() {
        assert_eq!(destination(Path::new("/dev/null")), Destination::Stream("/dev/null".into()));
        assert_eq!(destination(Path::new("/dev/stdout")), Destination::Stream("/dev/stdout".into()));
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new.svg");
        assert_eq!(destination(&new), Destination::File(new.clone()));
        // A symlink to a regular file: the file is replaced, the link stays.
        std::fs::write(&new, "old").unwrap();
        let link = dir.path().join("link.svg");
        std::os::unix::fs::symlink(&new, &link).unwrap();
        assert_eq!(destination(&link), Destination::File(std::fs::canonicalize(&new).unwrap()));
    }
}
