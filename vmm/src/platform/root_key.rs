//! The emulated platform's attestation root key and its file.
//!
//! File format: the P-384 secret scalar, 48 bytes big-endian (as SEC1 and
//! `EmulatedRoot::from_secret` take it), written as 96 hex digits and a
//! newline; surrounding whitespace is ignored when reading. The file must
//! not be readable or writable by group or others (mode 0600 or
//! stricter): covm refuses it otherwise, as ssh refuses an open key.
//!
//! `root_key=PATH` loads the key if PATH exists, otherwise generates one
//! with the OS's random generator (getrandom), writes it with mode 0600
//! (never over an existing file) and prints its public key; with no path
//! a fresh key lives only as long as the VM and its public key is printed.
//! Public keys are shown SEC1 compressed (49 bytes, 98 hex digits): the
//! form a policy's `trusted_roots` lists.

use super::{hex, parse_hex};
use covm_agent_protocol::policy::ROOT_KEY_LEN;
use covm_agent_protocol::EmulatedRoot;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Bytes of the secret scalar.
pub const SECRET_LEN: usize = 48;

/// Why a root key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RootKeyError {
    /// The file cannot be read, created or written.
    #[error("--platform root_key={}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no valid key.
    #[error("--platform root_key={}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The OS gave no randomness.
    #[error("cannot generate an emulated root key: no randomness from the OS: {0}")]
    Random(getrandom::Error),
}

/// Where a root key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Read from this file.
    Loaded(PathBuf),
    /// Generated and written to this file.
    Created(PathBuf),
    /// Generated for this VM only.
    Ephemeral,
}

/// A root key and where it came from.
pub struct RootKey {
    /// The signing root.
    pub root: EmulatedRoot,
    /// SEC1 compressed public key.
    pub public_key: [u8; ROOT_KEY_LEN],
    /// Where it came from.
    pub source: KeySource,
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootKey")
            .field("public_key", &hex(&self.public_key))
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl RootKey {
    fn new(root: EmulatedRoot, source: KeySource) -> Self {
        RootKey {
            public_key: root.public_key(),
            root,
            source,
        }
    }

    /// The line printed on standard error when a key is generated (None
    /// for a key that was loaded).
    pub fn announcement(&self) -> Option<String> {
        let public = hex(&self.public_key);
        match &self.source {
            KeySource::Loaded(_) => None,
            KeySource::Created(path) => Some(format!(
                "emulated_cvm root key generated and written to {} (mode 0600); public key {public}",
                path.display()
            )),
            KeySource::Ephemeral => Some(format!(
                "emulated_cvm root key generated for this VM only (give root_key=PATH to keep it); public key {public}"
            )),
        }
    }
}

/// A fresh root from the OS's randomness.
fn generate() -> Result<(EmulatedRoot, Zeroizing<[u8; SECRET_LEN]>), RootKeyError> {
    loop {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        getrandom::getrandom(&mut secret[..]).map_err(RootKeyError::Random)?;
        // Fails only for 0 or values >= the group order (about 2^-190).
        if let Ok(root) = EmulatedRoot::from_secret(&secret) {
            return Ok((root, secret));
        }
    }
}

/// Checks that the key file at `path`, if it exists, is one covm will
/// load (a regular file, its owner's alone, a P-384 secret), so that a
/// configuration naming it is refused before anything is created.
pub fn check_existing(path: &Path) -> Result<(), RootKeyError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => load(path).map(drop),
    }
}

/// Loads the key at `path` if it exists, else generates one and writes it
/// there; with no path, generates a key for this VM only.
pub fn load_or_create(path: Option<&Path>) -> Result<RootKey, RootKeyError> {
    let Some(path) = path else {
        let (root, _) = generate()?;
        return Ok(RootKey::new(root, KeySource::Ephemeral));
    };
    match std::fs::symlink_metadata(path) {
        Ok(_) => load(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(source) => Err(RootKeyError::Io {
            path: path.into(),
            what: "cannot inspect it",
            source,
        }),
    }
}

fn load(path: &Path) -> Result<RootKey, RootKeyError> {
    let io = |what| {
        move |source| RootKeyError::Io {
            path: path.into(),
            what,
            source,
        }
    };
    let invalid = |reason: String| RootKeyError::Invalid {
        path: path.into(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(io("cannot read it"))?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(invalid(format!(
            "permissions {mode:04o} are too open: the key must be readable by its owner only (chmod 600)"
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io("cannot read it"))?);
    let secret: Zeroizing<[u8; SECRET_LEN]> = Zeroizing::new(parse_hex(text.trim()).map_err(|e| {
        invalid(format!(
            "not a root key file (96 hex digits of a P-384 secret scalar): {e}"
        ))
    })?);
    let root =
        EmulatedRoot::from_secret(&secret).map_err(|_| invalid("the secret is not a valid P-384 scalar".into()))?;
    Ok(RootKey::new(root, KeySource::Loaded(path.into())))
}

fn create(path: &Path) -> Result<RootKey, RootKeyError> {
    let (root, secret) = generate()?;
    let io = |what| {
        move |source| RootKeyError::Io {
            path: path.into(),
            what,
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("cannot create it"))?;
    // The umask can only remove bits from 0600; set it exactly anyway.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io("cannot set its permissions"))?;
    let mut text = Zeroizing::new(hex(&secret[..]));
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("cannot write it"))?;
    Ok(RootKey::new(root, KeySource::Created(path.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("covm-rootkey-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn generates_writes_0600_then_loads_the_same_key() {
        let dir = scratch("gen");
        let path = dir.join("root.key");
        let created = load_or_create(Some(&path)).unwrap();
        assert_eq!(created.source, KeySource::Created(path.clone()));
        assert!(created.announcement().unwrap().contains(&hex(&created.public_key)));
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 97, "96 hex digits and a newline");
        assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
        let loaded = load_or_create(Some(&path)).unwrap();
        assert_eq!(loaded.public_key, created.public_key);
        assert_eq!(loaded.source, KeySource::Loaded(path.clone()));
        assert_eq!(loaded.announcement(), None);
        assert!(matches!(created.public_key[0], 0x02 | 0x03));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn loads_a_known_secret() {
        let dir = scratch("known");
        let path = dir.join("root.key");
        std::fs::write(&path, format!("  {}\n\n", "01".repeat(48))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        let key = load_or_create(Some(&path)).unwrap();
        let expected = EmulatedRoot::from_secret(&[1; 48]).unwrap().public_key();
        assert_eq!(key.public_key, expected);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ephemeral_keys_differ() {
        let a = load_or_create(None).unwrap();
        let b = load_or_create(None).unwrap();
        assert_eq!(a.source, KeySource::Ephemeral);
        assert_ne!(a.public_key, b.public_key);
        assert!(a.announcement().unwrap().contains("for this VM only"));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = scratch("bad");
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let cases = [
            (write("open", &"01".repeat(48), 0o644), "permissions 0644 are too open"),
            (write("group", &"01".repeat(48), 0o640), "permissions 0640 are too open"),
            (write("short", "0102", 0o600), "4 hex digits, expected 96"),
            (write("nothex", &"zz".repeat(48), 0o600), "not hex"),
            (write("zero", &"00".repeat(48), 0o600), "not a valid P-384 scalar"),
            (write("order", &"ff".repeat(48), 0o600), "not a valid P-384 scalar"),
        ];
        for (path, needle) in cases {
            let e = load_or_create(Some(&path)).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--platform root_key={}: ", path.display())),
                "{e}"
            );
            assert!(e.contains(needle), "expected {needle:?} in {e}");
        }
        let e = load_or_create(Some(&dir)).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = load_or_create(Some(&dir.join("missing/root.key")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot create it"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
