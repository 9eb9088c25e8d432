//! Authentication: the data dir's local secret, per-agent tokens, and the data dir lock.
//!
//! The local secret is for the user who owns the data dir: whoever can read the file could
//! read the SQLite store too, so letting it act as any agent gives nothing away. Tokens are
//! for everyone else and are bound to one agent name. Only SHA-256 hashes of tokens are stored;
//! tokens are 256 random bits, so a plain hash is enough (no password stretching needed).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// File name of the local secret inside the data dir.
pub const SECRET_FILE: &str = "local.secret";
/// File name of the lock that makes a data dir single-node.
pub const LOCK_FILE: &str = "node.lock";
/// Tokens start with this so they are recognisable in config files and leak scanners.
pub const TOKEN_PREFIX: &str = "sbt_";
/// Operator tokens (`token issue --operator`) start with this instead: an agent token that also
/// logs in to the dashboard. The prefix is part of what is hashed, so it cannot be added to an
/// agent token.
pub const OPERATOR_PREFIX: &str = "sbo_";

/// 256 random bits as hex.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A fresh agent token.
pub fn new_token() -> String {
    format!("{TOKEN_PREFIX}{}", random_hex())
}

/// A fresh operator token.
pub fn new_operator_token() -> String {
    format!("{OPERATOR_PREFIX}{}", random_hex())
}

/// Hex SHA-256, the form tokens are stored and looked up in.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares secrets without an early exit, so timing does not reveal how much matched.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Creates the data dir (0700) if needed.
pub fn ensure_data_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating the data dir {}", dir.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Reads the local secret, creating it (mode 0600) if the data dir has none yet.
pub fn load_or_create_secret(dir: &Path) -> Result<String> {
    let path = dir.join(SECRET_FILE);
    if let Some(s) = read_secret(dir)? {
        return Ok(s);
    }
    ensure_data_dir(dir)?;
    let secret = random_hex();
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(&path) {
        Ok(mut f) => {
            f.write_all(secret.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            Ok(secret)
        }
        // Another process created it between our read and our create: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_secret(dir)?.ok_or_else(|| Error::Config(format!("{} is empty", path.display())))
        }
        Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
    }
}

/// Reads the local secret if the data dir has one.
pub fn read_secret(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Holds the data dir's exclusive lock for as long as it lives. The OS drops the lock when the
/// process dies, however it dies, which is what makes takeover safe.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock or fails at once with [`Error::Locked`].
    pub fn acquire(dir: &Path) -> Result<DataDirLock> {
        ensure_data_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.display().to_string())),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_secret(dir.path()).unwrap();
        let b = load_or_create_secret(dir.path()).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            DataDirLock::acquire(dir.path()),
            Err(Error::Locked(_))
        ));
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn tokens_hash_and_compare() {
        let t = new_token();
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(hash_token(&t), hash_token(&t));
        assert!(constant_time_eq(&t, &t.clone()));
        assert!(!constant_time_eq(&t, "x"));
    }
}
