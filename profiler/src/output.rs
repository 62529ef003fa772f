//! Output files: choosing formats, checking paths before profiling, writing atomically.
use std::{
    collections::HashSet,
    io::{BufWriter, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::{
    cli::Format,
    error::{ExitCode, fatal},
    profile::Profile,
};

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
                    "cannot tell the format of '{}' from its extension: name it .svg, .folded or .json, or pass --format",
                    path.display()
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

fn check_writable(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        return Err(fatal(
            ExitCode::Output,
            format!("output '{}' is a directory: give a file name inside it, e.g. {}", path.display(),
                path.join("profile.svg").display()),
        ));
    }
    // Outputs replace their target by a rename, which a device or a pipe cannot take: say so
    // now rather than after profiling.
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.is_file()
    {
        return Err(fatal(
            ExitCode::Output,
            format!(
                "cannot write '{}': not a regular file (outputs are written to a temporary file renamed over the target); give a file path",
                path.display()
            ),
        ));
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(fatal(
            ExitCode::Output,
            format!("cannot write '{}': directory '{}' does not exist", path.display(), dir.display()),
        ));
    }
    tempfile::Builder::new().prefix(".pyebpf-check-").tempfile_in(dir).map_err(|e| {
        fatal(ExitCode::Output, format!("cannot write '{}': {e}", path.display()))
    })?;
    Ok(())
}

/// Writes one output: into a temporary file beside the target, then renamed over it, so a
/// reader never sees a partial file and an interrupted write leaves the old file in place.
pub fn write(profile: &Profile, spec: &OutputSpec) -> anyhow::Result<()> {
    let dir = parent_dir(&spec.path);
    let tmp = tempfile::Builder::new()
        .prefix(".pyebpf-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in '{}'", dir.display()))?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        render(profile, spec.format, &mut w)?;
        w.flush()?;
    }
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(&spec.path)
        .map_err(|e| fatal(ExitCode::Output, format!("cannot write '{}': {}", spec.path.display(), e.error)))?;
    Ok(())
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
        Format::Svg => crate::flamegraph::write_svg(profile, w)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `-o /dev/null` used to pass the check and fail after the whole profile, at the rename.
    #[test]
    fn devices_are_refused_before_profiling() {
        let err = plan(&[PathBuf::from("/dev/null")], Some(Format::Json)).unwrap_err();
        let fatal = err.downcast_ref::<crate::error::Fatal>().unwrap();
        assert_eq!(fatal.code, ExitCode::Output);
        assert!(fatal.message.contains("not a regular file"), "{}", fatal.message);
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("old.json");
        std::fs::write(&existing, "{}").unwrap();
        assert!(plan(&[existing, dir.path().join("new.svg")], None).is_ok());
    }
}
