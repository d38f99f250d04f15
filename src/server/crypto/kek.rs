//! Key-encryption keys (KEKs): the keys that seal private signing keys at rest.
//!
//! They come from `SIGNET_ENC_KEYS` (`id:base64key,...`) and `SIGNET_ENC_KEY_ACTIVE`, or,
//! in the embedded default, from a key file in the data directory that the first start
//! creates with mode 0600. A KEK never lives in the database, so a dump of the database
//! alone cannot unseal anything.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Name of the embedded default's key file inside the data directory.
pub const KEK_FILE: &str = "signet.kek";

/// Id given to the KEK that the embedded default generates.
const GENERATED_ID: &str = "local1";

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("key file {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("key file {} cannot be read: {}", .0.display(), .1)]
    Unreadable(PathBuf, std::io::Error),
    #[error("key file {} is readable by other users (mode {:o}); run chmod 600 on it", .0.display(), .1)]
    TooOpen(PathBuf, u32),
    #[error("key file {}: {}", .0.display(), .1)]
    BadFile(PathBuf, Box<KekError>),
    #[error("entry '{0}' is not of the form id:base64key")]
    Malformed(String),
    #[error("key '{0}' is not valid base64")]
    BadBase64(String),
    #[error("key '{0}' is {1} bytes long; a KEK must be exactly 32 bytes (256 bits)")]
    BadLength(String, usize),
    #[error("key id '{0}' appears twice")]
    DuplicateId(String),
    #[error("no keys given")]
    Empty,
    #[error("active key id '{0}' is not among the configured keys")]
    UnknownActive(String),
    #[error("several keys are configured; set SIGNET_ENC_KEY_ACTIVE to choose one")]
    NoActive,
    #[error("cannot create key file {}: {}", .0.display(), .1)]
    Create(PathBuf, std::io::Error),
}

/// One 256-bit key-encryption key. Its bytes never appear in `Debug` output.
#[derive(Clone)]
pub struct Kek {
    id: String,
    key: [u8; 32],
}

impl Kek {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("key", &"REDACTED")
            .finish()
    }
}

/// All known KEKs (old ones are needed to open rows sealed before a KEK rotation) and the
/// one that seals new rows.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<Kek>,
    active: usize,
}

impl Keyring {
    /// Parses `id:base64key[,id:base64key...]` and the active id. With a single key the
    /// active id may be left empty.
    pub fn parse(keys: &str, active: &str) -> Result<Self, KekError> {
        let mut parsed: Vec<Kek> = Vec::new();
        for entry in keys.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, b64) = entry
                .split_once(':')
                .filter(|(id, b64)| !id.trim().is_empty() && !b64.trim().is_empty())
                .ok_or_else(|| KekError::Malformed(redact_entry(entry)))?;
            let id = id.trim().to_string();
            let bytes = STANDARD
                .decode(b64.trim())
                .map_err(|_| KekError::BadBase64(id.clone()))?;
            let key: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| KekError::BadLength(id.clone(), bytes.len()))?;
            if parsed.iter().any(|k| k.id == id) {
                return Err(KekError::DuplicateId(id));
            }
            parsed.push(Kek { id, key });
        }
        if parsed.is_empty() {
            return Err(KekError::Empty);
        }
        let active = match active.trim() {
            "" if parsed.len() == 1 => 0,
            "" => return Err(KekError::NoActive),
            id => parsed
                .iter()
                .position(|k| k.id == id)
                .ok_or_else(|| KekError::UnknownActive(id.to_string()))?,
        };
        Ok(Self {
            keys: parsed,
            active,
        })
    }

    pub fn active(&self) -> &Kek {
        &self.keys[self.active]
    }

    pub fn active_id(&self) -> &str {
        &self.keys[self.active].id
    }

    pub fn get(&self, id: &str) -> Option<&Kek> {
        self.keys.iter().find(|k| k.id == id)
    }
}

/// Only the id of a malformed entry is shown: the rest may be key material.
fn redact_entry(entry: &str) -> String {
    match entry.split_once(':') {
        Some((id, _)) => format!("{id}:…"),
        None => "…".to_string(),
    }
}

/// Reads the embedded default's key file, refusing one that other users can read.
pub fn read_key_file(path: &Path) -> Result<Keyring, KekError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KekError::Missing(path.to_path_buf()));
        }
        Err(e) => return Err(KekError::Unreadable(path.to_path_buf(), e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KekError::TooOpen(path.to_path_buf(), mode));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text =
        std::fs::read_to_string(path).map_err(|e| KekError::Unreadable(path.to_path_buf(), e))?;
    Keyring::parse(text.trim(), "").map_err(|e| KekError::BadFile(path.to_path_buf(), Box::new(e)))
}

/// Loads the embedded default's key file, creating it (mode 0600) when it does not exist.
/// Returns whether it was created, so the caller can warn about it.
///
/// The new key is written to a temporary file in the same directory, synced, then linked
/// to its name (which fails if the name exists, unlike a rename) and the directory synced:
/// a crash leaves either no key file or a complete one, never an empty one next to keys
/// sealed under it. Of several processes creating it at once, one wins the link; the
/// others drop their key and use the winner's.
pub fn load_or_create_key_file(path: &Path) -> Result<(Keyring, bool), KekError> {
    match read_key_file(path) {
        Ok(ring) => return Ok((ring, false)),
        Err(KekError::Missing(_)) => {}
        Err(e) => return Err(e),
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let line = format!("{GENERATED_ID}:{}\n", STANDARD.encode(key));
    let create = |e| KekError::Create(path.to_path_buf(), e);
    let temp = temp_path(path);
    let written = write_synced(&temp, line.as_bytes());
    let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
    // The temporary name goes whatever happened; the key lives on under `path` if linked.
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another process created it first: its key is the one.
            return read_key_file(path).map(|ring| (ring, false));
        }
        Err(e) => return Err(create(e)),
    }
    sync_dir(path).map_err(create)?;
    Ok((
        Keyring {
            keys: vec![Kek {
                id: GENERATED_ID.to_string(),
                key,
            }],
            active: 0,
        },
        true,
    ))
}

/// A name beside `path` that no other process uses: `.signet.kek.<pid>.<random>.tmp`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| KEK_FILE.into(), |n| n.to_string_lossy().into_owned());
    let nonce = rand::rng().next_u64();
    path.with_file_name(format!(".{name}.{}.{nonce:016x}.tmp", std::process::id()))
}

/// Creates `path` (mode 0600 whatever the umask), writes `bytes` and syncs them.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes the directory entry of `path` durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:HxwdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

    #[test]
    fn parses_and_picks_active() {
        let ring = Keyring::parse(&format!("{K1},{K2}"), "k2").unwrap();
        assert_eq!(ring.active_id(), "k2");
        assert_eq!(ring.get("k1").unwrap().key_bytes()[1], 1);
        assert_eq!(Keyring::parse(K1, "").unwrap().active_id(), "k1");
    }

    #[test]
    fn rejects_bad_keyrings() {
        assert!(matches!(Keyring::parse("", ""), Err(KekError::Empty)));
        assert!(matches!(
            Keyring::parse("k1", ""),
            Err(KekError::Malformed(_))
        ));
        assert!(matches!(
            Keyring::parse("k1:!!", ""),
            Err(KekError::BadBase64(_))
        ));
        assert!(matches!(
            Keyring::parse("k1:AAAA", ""),
            Err(KekError::BadLength(_, 3))
        ));
        assert!(matches!(
            Keyring::parse(&format!("{K1},{K1}"), "k1"),
            Err(KekError::DuplicateId(_))
        ));
        assert!(matches!(
            Keyring::parse(&format!("{K1},{K2}"), ""),
            Err(KekError::NoActive)
        ));
        assert!(matches!(
            Keyring::parse(K1, "k9"),
            Err(KekError::UnknownActive(_))
        ));
    }

    #[test]
    fn debug_and_errors_hide_key_material() {
        let ring = Keyring::parse(K1, "").unwrap();
        assert!(!format!("{ring:?}").contains("AAECAw"));
        let err =
            Keyring::parse("k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "").unwrap_err();
        assert!(!err.to_string().contains("AAECAw"), "{err}");
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEK_FILE);
        let (ring, created) = load_or_create_key_file(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (again, created) = load_or_create_key_file(&path).unwrap();
        assert!(!created);
        assert_eq!(ring.active().key_bytes(), again.active().key_bytes());
        // Complete, and nothing else is left in the directory (no temporary file).
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("local1:") && text.ends_with('\n'),
            "{text}"
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![KEK_FILE.to_string()]);
    }

    #[test]
    fn concurrent_creators_end_with_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(KEK_FILE);
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let creators: Vec<_> = (0..8)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        load_or_create_key_file(&path)
                    })
                })
                .collect();
            let results: Vec<(Keyring, bool)> = creators
                .into_iter()
                .map(|t| t.join().unwrap().expect("every creator gets a key"))
                .collect();
            assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
            let on_disk = read_key_file(&path).unwrap();
            for (ring, _) in &results {
                assert_eq!(ring.active().key_bytes(), on_disk.active().key_bytes());
            }
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                1,
                "a temp file was left"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn key_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEK_FILE);
        std::fs::write(&path, K1).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_key_file(&path),
            Err(KekError::TooOpen(_, 0o644))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key_file(&path).is_ok());
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(read_key_file(&path), Err(KekError::BadFile(..))));
    }
}
