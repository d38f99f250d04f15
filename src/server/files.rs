//! Files that only the service's own user may open: the data directory and the SQLite
//! database's directories (0700), the database file and its `-wal` and `-shm` files
//! (0600). Modes are set explicitly, so the process umask does not matter.
//!
//! Existing installations: a database, WAL or SHM file other users can open is tightened
//! to 0600, with a warning. A directory that already existed is never changed (it may be
//! shared, such as the working directory); `serve` warns at start if other users can
//! enter the data directory.

use std::io;
use std::path::{Path, PathBuf};

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents, each with mode 0700. An existing `dir` is left
/// alone (see [`warn_if_open`]).
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => set_mode(d, DIR_MODE)?,
            // Another process made it meanwhile: theirs has the same mode.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Before SQLite opens `db`: creates it empty with mode 0600 when missing (SQLite takes
/// an empty file as a new database, and gives the `-wal` and `-shm` files it creates
/// later the database file's mode), and tightens the file and any existing `-wal` and
/// `-shm` to 0600.
pub fn prepare_private_db(db: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(FILE_MODE);
    }
    match options.open(db) {
        Ok(file) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
            }
            #[cfg(not(unix))]
            drop(file);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    tighten_db_files(db)
}

/// Sets the database file and its existing `-wal` and `-shm` files to 0600, warning about
/// each that was open to other users.
pub fn tighten_db_files(db: &Path) -> io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_os_string();
        name.push(suffix);
        let path = PathBuf::from(name);
        match mode_of(&path) {
            Ok(Some(mode)) if mode & 0o077 != 0 => {
                set_mode(&path, FILE_MODE)?;
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "database file was open to other users; its mode is now 600"
                );
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Warns when other users can enter `dir` (`serve` does this for the data directory at
/// start; the CLI stays quiet, its stderr is for its own answer).
pub fn warn_if_open(dir: &Path, what: &str) {
    if let Ok(Some(mode)) = mode_of(dir)
        && mode & 0o077 != 0
    {
        tracing::warn!(
            path = %dir.display(),
            mode = format!("{mode:o}"),
            "the {what} is open to other users; run chmod 700 on it"
        );
    }
}

/// The permission bits of `path` (`None` where there are none to read).
fn mode_of(path: &Path) -> io::Result<Option<u32>> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        Ok(Some(meta.permissions().mode() & 0o777))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Ok(None)
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}
