//! Autolock, as SwarmKit does it: a cluster-wide key-encrypting key (KEK, the unlock key shown as
//! `SWMKEY-1-<base64 of 32 bytes>`) seals each manager's TLS key and its Raft data key (DEK) on
//! disk, so a manager restarted from its disk cannot read its store, nor prove who it is, until
//! someone gives it the key (`swarm unlock`). The KEK itself lives in the replicated cluster
//! object (inside the Raft store, sealed by the DEK), so every manager learns it, and a rotated
//! KEK, over Raft; each manager re-seals its files when the cluster's KEK changes. A manager that
//! was down during a rotation still has files sealed with the old key, so it takes the old key
//! once, then re-seals with the new one when it has caught up. Workers are never locked.
//!
//! On disk, while locked, `swarm-node.key` holds one sealed bundle of the TLS key and the DEK
//! (SwarmKit keeps the DEK in the key's PEM headers for the same reason: one atomic rename
//! re-seals both) and `swarm-node.dek` is gone; unlocked, both are plain files as before.
//! The bundle is ChaCha20-Poly1305 under the KEK (the Raft store's AEAD), with its purpose as
//! associated data. It is a format of our own, not an encrypted PKCS#8 file: only this agent
//! reads it, and PKCS#8's password-based schemes would add a KDF and AES for no gain with a
//! random 256-bit key.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::daemon::{ApiError, Daemon, Session, write_private};
use crate::store::Dek;

pub const KEY_PREFIX: &str = "SWMKEY-1-";
/// Docker's answer on a locked node to everything but unlock, leave --force and the info calls.
pub const LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"docker swarm unlock\" to unlock it.";
pub const INVALID_KEY: &str = "swarm could not be unlocked: invalid key provided";
pub const NOT_LOCKED: &str = "swarm is not locked";
pub const BAD_KEY_STRING: &str = "invalid key string";
pub const LEAVE_LOCKED: &str = "Swarm is encrypted and locked. Please unlock it first or use `--force` to ignore this message.";

const SEALED_PREFIX: &str = "slipway-swarm-sealed-v1 ";
const PURPOSE: &[u8] = b"swarm-node.key+dek";

/// A new unlock key, in its human-readable form.
pub fn new_unlock_key() -> String {
    to_human(&crate::ids::random_bytes::<32>())
}

pub fn to_human(kek: &[u8]) -> String {
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(kek)
    )
}

/// `SWMKEY-1-...` to the key's bytes; surrounding whitespace (a pasted newline) is ignored.
pub fn parse_human(key: &str) -> Result<Vec<u8>, ApiError> {
    let bad = || ApiError::new(400, BAD_KEY_STRING);
    let body = key.trim().strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(body.trim_end_matches('='))
        .map_err(|_| bad())
}

/// What a locked manager's key file holds.
#[derive(Serialize, Deserialize)]
struct Bundle {
    key_pem: String,
    dek_hex: String,
}

pub fn is_sealed(file: &[u8]) -> bool {
    file.starts_with(SEALED_PREFIX.as_bytes())
}

fn seal(kek: &[u8], key_pem: &str, dek_hex: &str) -> Result<Vec<u8>, ApiError> {
    let aead = Dek::new(kek).map_err(|e| ApiError::new(500, format!("unlock key: {e}")))?;
    let plain = serde_json::to_vec(&Bundle {
        key_pem: key_pem.into(),
        dek_hex: dek_hex.into(),
    })
    .map_err(|e| ApiError::new(500, format!("sealing the node key: {e}")))?;
    let sealed = aead.seal(PURPOSE, &plain);
    let mut out = SEALED_PREFIX.as_bytes().to_vec();
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(sealed)
            .as_bytes(),
    );
    out.push(b'\n');
    Ok(out)
}

/// Opens a sealed key file: the TLS key (PEM) and the DEK (hex). Any failure, a key of the
/// wrong length included, is Docker's "invalid key provided".
fn open(kek: &[u8], file: &[u8]) -> Result<(String, String), ApiError> {
    let invalid = || ApiError::new(401, INVALID_KEY);
    let body = file
        .strip_prefix(SEALED_PREFIX.as_bytes())
        .ok_or_else(invalid)?;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(body.trim_ascii())
        .map_err(|_| invalid())?;
    let plain = Dek::new(kek)
        .map_err(|_| invalid())?
        .open(PURPOSE, &sealed)
        .map_err(|_| invalid())?;
    let bundle: Bundle = serde_json::from_slice(&plain).map_err(|_| invalid())?;
    Ok((bundle.key_pem, bundle.dek_hex))
}

/// The node's TLS key (PEM) and DEK (hex, when it has one) as the files hold them, opened with
/// `kek` when sealed. `Ok(None)`: sealed, and no key was given (the node is locked).
pub fn read(
    key_path: &Path,
    dek_path: &Path,
    kek: Option<&[u8]>,
) -> Result<Option<(String, Option<String>)>, ApiError> {
    let file = std::fs::read(key_path)
        .map_err(|e| ApiError::new(500, format!("{}: {e}", key_path.display())))?;
    if is_sealed(&file) {
        let Some(kek) = kek else { return Ok(None) };
        let (key, dek) = open(kek, &file)?;
        return Ok(Some((key, Some(dek))));
    }
    let key = String::from_utf8(file).map_err(|_| ApiError::new(500, "the node key is not PEM"))?;
    let dek = std::fs::read_to_string(dek_path).ok();
    Ok(Some((key, dek)))
}

/// Writes the node's key and DEK, sealed with `kek` or in the clear. The order keeps a crash
/// between two steps harmless: the sealed bundle is complete before the plain DEK goes, and the
/// plain DEK is back before the sealed bundle is replaced by the plain key.
pub fn write(
    key_path: &Path,
    dek_path: &Path,
    key_pem: &str,
    dek_hex: Option<&str>,
    kek: Option<&[u8]>,
) -> Result<(), ApiError> {
    let io = |what: &str, e: std::io::Error| ApiError::new(500, format!("writing the {what}: {e}"));
    match (kek, dek_hex) {
        (Some(kek), Some(dek)) => {
            write_private(key_path, &seal(kek, key_pem, dek)?).map_err(|e| io("node key", e))?;
            match std::fs::remove_file(dek_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("data key", e)),
            }
        }
        _ => {
            if let Some(dek) = dek_hex {
                write_private(dek_path, dek.as_bytes()).map_err(|e| io("data key", e))?;
            }
            write_private(key_path, key_pem.as_bytes()).map_err(|e| io("node key", e))?;
        }
    }
    Ok(())
}

/// The KEK this node's files should be sealed with: the cluster's, on a manager that has the
/// cluster state; none on a worker. `None` when it cannot tell yet (a manager still catching up).
fn wanted(session: &Session) -> Option<Option<Vec<u8>>> {
    let Some(parts) = session.manager() else {
        return Some(None);
    };
    let applied = parts.shared.read().unwrap_or_else(|e| e.into_inner());
    let cluster = applied.state.cluster.as_ref()?;
    Some(match &cluster.unlock_key {
        Some(key) => Some(parse_human(key).ok()?),
        None => None,
    })
}

/// Re-seals this node's files when the KEK they should have changed (autolock turned on or off,
/// the key rotated, the node promoted or demoted).
pub fn sync(daemon: &Daemon, session: &Session) -> Result<(), ApiError> {
    let Some(wanted) = wanted(session) else {
        return Ok(());
    };
    let mut current = session.kek.lock().unwrap_or_else(|e| e.into_inner());
    if *current == wanted {
        return Ok(());
    }
    let (key_path, dek_path) = daemon.key_paths();
    let Some((key_pem, dek_hex)) = read(&key_path, &dek_path, current.as_deref())? else {
        return Err(ApiError::new(
            500,
            "the node key is sealed with an unknown key",
        ));
    };
    write(
        &key_path,
        &dek_path,
        &key_pem,
        dek_hex.as_deref(),
        wanted.as_deref(),
    )?;
    tracing::info!(
        "{} the node key and the Raft data key",
        if wanted.is_some() {
            "sealed (autolock)"
        } else {
            "unsealed"
        }
    );
    *current = wanted;
    Ok(())
}

/// Every node: keeps its files sealed with the cluster's current KEK.
pub async fn watch(daemon: Daemon, session: std::sync::Weak<Session>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(s) = session.upgrade() else { return };
        if let Err(e) = sync(&daemon, &s) {
            tracing::warn!("autolock: {}", e.message);
        }
    }
}

/// Writes a renewed TLS key under the session's current KEK.
pub fn write_key(daemon: &Daemon, session: &Arc<Session>, key_pem: &str) -> Result<(), ApiError> {
    let current = session.kek.lock().unwrap_or_else(|e| e.into_inner());
    let (key_path, dek_path) = daemon.key_paths();
    let dek = match current.as_deref() {
        Some(kek) => {
            let file = std::fs::read(&key_path)
                .map_err(|e| ApiError::new(500, format!("{}: {e}", key_path.display())))?;
            Some(open(kek, &file)?.1)
        }
        None => None,
    };
    write(
        &key_path,
        &dek_path,
        key_pem,
        dek.as_deref(),
        current.as_deref(),
    )
}

/// The CLI's `unlock`: the key from standard input, one line. On a terminal it asks for it and
/// turns echo off while it is typed, as Docker's CLI does.
pub fn read_unlock_key() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let saved = if terminal {
        print!("Enter unlock key: ");
        std::io::stdout().flush()?;
        let saved = rustix::termios::tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
            let _ =
                rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet);
        }
        saved
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
        println!();
    }
    read?;
    Ok(line.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlock_keys_round_trip_and_garbage_is_refused() {
        let key = new_unlock_key();
        assert!(key.starts_with("SWMKEY-1-"));
        assert_eq!(parse_human(&format!("{key}\n")).unwrap().len(), 32);
        for bad in ["", "SWMKEY-1-", "SWMKEY-2-abc", "SWMKEY-1-!!!", "nonsense"] {
            let e = parse_human(bad);
            if bad == "SWMKEY-1-" {
                assert!(e.unwrap().is_empty());
                continue;
            }
            assert_eq!(e.unwrap_err().message, BAD_KEY_STRING, "{bad:?}");
        }
    }

    #[test]
    fn sealed_files_open_only_with_their_key_and_hold_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let (key, dek) = (dir.path().join("k"), dir.path().join("d"));
        let kek = parse_human(&new_unlock_key()).unwrap();
        write(&key, &dek, "PEM-SECRET", Some("abcd"), Some(&kek)).unwrap();
        assert!(!dek.exists());
        let file = std::fs::read(&key).unwrap();
        assert!(is_sealed(&file));
        assert!(!String::from_utf8_lossy(&file).contains("PEM-SECRET"));
        assert_eq!(read(&key, &dek, None).unwrap(), None);
        let other = parse_human(&new_unlock_key()).unwrap();
        assert_eq!(read(&key, &dek, Some(&other)).unwrap_err().status, 401);
        assert_eq!(read(&key, &dek, Some(b"short")).unwrap_err().status, 401);
        assert_eq!(
            read(&key, &dek, Some(&kek)).unwrap(),
            Some(("PEM-SECRET".into(), Some("abcd".into())))
        );
        write(&key, &dek, "PEM-SECRET", Some("abcd"), None).unwrap();
        assert_eq!(std::fs::read_to_string(&dek).unwrap(), "abcd");
        assert_eq!(
            read(&key, &dek, None).unwrap(),
            Some(("PEM-SECRET".into(), Some("abcd".into())))
        );
    }
}
