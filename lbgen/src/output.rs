//! Writing the config: validate a temp file, keep `F.bak`, rename into place.
//!
//! The live file is only ever replaced by `rename(2)` of a fully written, fsynced and
//! validated temp file in the same directory, so HAProxy (or a reader) never sees a partial
//! or unchecked config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::NamedTempFile;

use crate::Error;

/// `--check-cmd`: a program and arguments; `{}` is replaced by the file to check (appended if
/// absent). No shell is involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckCmd(pub Vec<String>);

impl CheckCmd {
    pub const DEFAULT: &'static str = "haproxy -c -q -f {}";

    pub fn parse(s: &str) -> Result<CheckCmd, Error> {
        let words: Vec<String> = s.split_whitespace().map(str::to_string).collect();
        if words.is_empty() {
            return Err(Error::new("--check-cmd is empty"));
        }
        Ok(CheckCmd(words))
    }

    /// Runs the check on `file`; Err carries the checker's own explanation on one line.
    /// A checker that failed silently because of `-q` (HAProxy's default here prints nothing
    /// at all then) is run once more without `-q`, so the reason is never empty.
    pub async fn run(&self, file: &Path) -> Result<(), Error> {
        let (status, why) = self.run_once(file, false).await?;
        if status.success() {
            return Ok(());
        }
        let why = if why.is_empty() && self.0[1..].iter().any(|a| a == "-q") {
            let (_, loud) = self.run_once(file, true).await?;
            loud
        } else {
            why
        };
        let why = if why.is_empty() {
            "(it printed nothing)".to_string()
        } else {
            why
        };
        Err(Error::new(format!(
            "config check `{}` rejected the new config ({status}): {why}",
            self.0[0]
        )))
    }

    /// One run: exit status and its output on one line, at most 600 bytes.
    async fn run_once(
        &self,
        file: &Path,
        drop_quiet: bool,
    ) -> Result<(std::process::ExitStatus, String), Error> {
        let f = file.display().to_string();
        let mut args: Vec<String> = self.0[1..]
            .iter()
            .filter(|a| !(drop_quiet && *a == "-q"))
            .map(|a| a.replace("{}", &f))
            .collect();
        if !self.0.iter().any(|a| a.contains("{}")) {
            args.push(f.clone());
        }
        let mut cmd = tokio::process::Command::new(resolve_program(&self.0[0]));
        cmd.args(&args).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .map_err(|_| Error::new(format!("config check `{}` timed out", self.0[0])))?
            .map_err(|e| Error::new(format!("config check `{}`: {e}", self.0[0])))?;
        if out.status.success() {
            return Ok((out.status, String::new()));
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let mut why: String = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        if why.len() > 600 {
            let cut = (0..=600)
                .rev()
                .find(|i| why.is_char_boundary(*i))
                .unwrap_or(0);
            why.truncate(cut);
            why.push('…');
        }
        Ok((out.status, why))
    }
}

/// A bare program name as found on `PATH`, else in `/usr/sbin` or `/sbin` (where Debian puts
/// `haproxy`, often not on a non-root user's `PATH`).
pub fn resolve_program(name: &str) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if !on_path {
        for d in ["/usr/sbin", "/sbin", "/usr/local/sbin"] {
            let p = Path::new(d).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(name)
}

pub fn backup_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".bak");
    PathBuf::from(s)
}

/// Mode of the config and its backup: readable by HAProxy whatever user it runs as.
const CONFIG_MODE: u32 = 0o644;

/// A fresh temp file next to `path` holding `contents`, fsynced: created with `O_EXCL` under
/// a random name (so a file or symlink planted in the directory is never reused or followed),
/// its mode set before any byte is written. Dropping it removes it.
fn write_temp(path: &Path, what: &str, contents: &[u8]) -> std::io::Result<NamedTempFile> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let mode = std::fs::Permissions::from_mode(CONFIG_MODE);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.lbgen-{what}-"))
        .permissions(mode.clone())
        .tempfile_in(dir)?;
    // Exactly CONFIG_MODE whatever the umask, set on the open file.
    tmp.as_file().set_permissions(mode)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

/// Writes `contents` to `path` atomically: temp file → optional check → copy the current
/// file to `path.bak` → rename. On any error `path` is untouched.
pub async fn write_atomic(
    path: &Path,
    contents: &str,
    check: Option<&CheckCmd>,
) -> Result<(), Error> {
    let tmp = write_temp(path, "new", contents.as_bytes())
        .map_err(|e| Error::new(format!("writing a temp file for {}: {e}", path.display())))?;
    if let Some(c) = check {
        c.run(tmp.path()).await?;
    }
    if path.exists() {
        // The backup is replaced atomically too, so it is always a whole config.
        let bak = backup_path(path);
        std::fs::read(path)
            .and_then(|old| write_temp(path, "bak", &old))
            .and_then(|t| t.persist(&bak).map_err(|e| e.error))
            .map_err(|e| Error::new(format!("backing up to {}: {e}", bak.display())))?;
    }
    tmp.persist(path)
        .map_err(|e| Error::new(format!("renaming into {}: {e}", path.display())))?;
    Ok(())
}

/// Replaces `path` with `contents` atomically (temp file + rename), keeping no backup: for
/// files other than the HAProxy config (`--render`).
pub fn replace_file(path: &Path, contents: &str) -> Result<(), Error> {
    write_temp(path, "new", contents.as_bytes())
        .and_then(|t| t.persist(path).map_err(|e| e.error))
        .map(drop)
        .map_err(|e| Error::new(format!("writing {}: {e}", path.display())))
}

/// Puts `contents` (the last good config) back at `path`, atomically, without touching `.bak`.
pub fn restore(path: &Path, contents: &str) -> Result<(), Error> {
    write_temp(path, "restore", contents.as_bytes())
        .and_then(|t| t.persist(path).map_err(|e| e.error))
        .map(drop)
        .map_err(|e| Error::new(format!("restoring {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_and_keeps_a_backup() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.cfg");
        write_atomic(&p, "one\n", None).await.unwrap();
        write_atomic(&p, "two\n", None).await.unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two\n");
        assert_eq!(std::fs::read_to_string(backup_path(&p)).unwrap(), "one\n");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[tokio::test]
    async fn symlinks_planted_at_the_old_temp_names_are_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.cfg");
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // The names lbgen used to write through: predictable from its pid.
        for what in ["new", "bak", "restore"] {
            let planted = d
                .path()
                .join(format!(".h.cfg.lbgen-{what}-{}", std::process::id()));
            std::os::unix::fs::symlink(&victim, planted).unwrap();
        }
        write_atomic(&p, "one\n", None).await.unwrap();
        write_atomic(&p, "two\n", None).await.unwrap();
        restore(&p, "one\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(backup_path(&p)).unwrap(), "one\n");
        use std::os::unix::fs::PermissionsExt;
        for f in [p.clone(), backup_path(&p)] {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, CONFIG_MODE, "{}", f.display());
        }
    }

    #[tokio::test]
    async fn a_failed_check_leaves_the_file_untouched() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.cfg");
        write_atomic(&p, "good\n", None).await.unwrap();
        let fail = CheckCmd::parse("false").unwrap();
        let err = write_atomic(&p, "bad\n", Some(&fail)).await.unwrap_err();
        assert!(err.to_string().contains("rejected"), "{err}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "good\n");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn check_cmd_substitutes_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.cfg");
        // `grep -q good {}` succeeds only if it was given the temp file.
        let c = CheckCmd::parse("grep -q good {}").unwrap();
        write_atomic(&p, "good\n", Some(&c)).await.unwrap();
        assert!(write_atomic(&p, "bad\n", Some(&c)).await.is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "good\n");
    }

    #[tokio::test]
    async fn a_config_rejected_by_a_quiet_haproxy_check_is_logged_with_haproxys_reason() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.cfg");
        let c = CheckCmd::parse(CheckCmd::DEFAULT).unwrap();
        let err = write_atomic(&p, "global\n    bogus-keyword here\n", Some(&c))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown keyword 'bogus-keyword'"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(!p.exists());
    }
}
