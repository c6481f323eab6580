//! The mesh secret file: bridges between groups present its content to prove they belong to
//! the mesh (`[mesh] secret_file`).
//!
//! Owns: making a new secret file (random, readable by its owner only) and never overwriting
//! an existing one — every group of a mesh must hold the same secret, so replacing it on one
//! machine would cut that machine off. Must not touch: checking a presented secret (the
//! network does that, in constant time).

use std::io::Write;
use std::path::Path;

/// Bytes of randomness in a generated secret (printed as hex, twice as many characters).
const SECRET_BYTES: usize = 32;

/// Writes a new random mesh secret to `path` (mode 0600, parent directories created) unless
/// the file exists. Returns whether it wrote one.
pub fn ensure_mesh_secret(path: &Path) -> std::io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let bytes: [u8; SECRET_BYTES] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(format!("{hex}\n").as_bytes())?;
            file.sync_all()?;
            Ok(true)
        }
        // Another process made it between the check and the open: theirs is the secret.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_secret_is_random_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("x/a.secret"), dir.path().join("b.secret"));
        assert!(ensure_mesh_secret(&a).unwrap());
        assert!(ensure_mesh_secret(&b).unwrap());
        let text = std::fs::read_to_string(&a).unwrap();
        assert_eq!(text.trim().len(), SECRET_BYTES * 2);
        assert_ne!(text, std::fs::read_to_string(&b).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&a).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!ensure_mesh_secret(&a).unwrap(), "an existing secret stays");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), text);
    }
}
