//! File-lock election: the members of a group share a directory (its journal lives there) and
//! the one holding an exclusive OS lock on `DIR/lock` is master.
//!
//! The kernel releases the lock when its holder dies, however it dies, so a standby polling
//! every `lock_poll` takes over within that time. The master re-checks every `lock_poll` that
//! the lock file it holds is still the one at that path (deleted or replaced by someone else
//! means another process could lock the new file), and steps down at once if not — never two
//! masters writing one journal.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::state::{MemberState, Role};
use super::term::Term;
use crate::metrics as m;
use crate::server::options::ServerOptions;

/// An exclusive lock on a file, held while this value lives.
pub(crate) struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Takes the lock if it is free; `Ok(None)` when another process holds it.
    pub fn try_acquire(path: &Path) -> std::io::Result<Option<FileLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Some(FileLock {
                file,
                path: path.to_path_buf(),
            }));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(err)
        }
    }

    /// True while the file at the path is still the one this lock is on.
    pub fn still_held(&self) -> bool {
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(at_path), Ok(ours)) => at_path.ino() == ours.ino() && at_path.dev() == ours.dev(),
            _ => false,
        }
    }
}

/// Runs a file-lock member until shutdown: standby until the lock is ours, master while it
/// stays ours.
pub(crate) async fn file_lock_member(
    opts: Arc<ServerOptions>,
    state: Arc<MemberState>,
    dir: PathBuf,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let lock_path = dir.join("lock");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot create the shared directory");
    }
    let mut warned = false;
    let won = metrics::counter!(m::HA_ELECTIONS, "result" => "won");
    won.increment(0);
    if let Some(epoch) = opts.handed_over_at.filter(|e| *e > 0) {
        state.set_role(Role::Slave);
        yield_to_standby(&dir, epoch, poll, &shutdown).await;
    }
    loop {
        state.set_role(Role::Slave);
        let lock = loop {
            // A standby shows the epoch of the master it stands behind.
            if let Ok(Some(epoch)) = current_epoch(&dir) {
                state.set_epoch(epoch);
            }
            match FileLock::try_acquire(&lock_path) {
                Ok(Some(lock)) => break lock,
                Ok(None) => {}
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(path = %lock_path.display(), error = %e, "cannot try the master lock");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.cancelled() => return,
            }
        };
        match next_epoch(&dir) {
            Ok(epoch) => {
                state.set_epoch(epoch);
                won.increment(1);
                tracing::info!(path = %lock_path.display(), epoch, "took the master lock");
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot record the new epoch; giving the lock up");
                drop(lock);
                tokio::select! {
                    _ = tokio::time::sleep(poll.max(Duration::from_secs(1))) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        }
        let term = match Term::start(&opts, &state, &shutdown).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve as master; giving the lock up");
                drop(lock);
                tokio::select! {
                    _ = tokio::time::sleep(poll.max(Duration::from_secs(1))) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let stopped = term.stopped();
        let lost = loop {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {
                    if !lock.still_held() {
                        break true;
                    }
                }
                _ = stopped.cancelled() => break false,
            }
        };
        if lost {
            tracing::error!(path = %lock_path.display(), "the master lock file was removed or replaced: stepping down");
        }
        term.stop(&state, opts.shutdown_timeout).await;
        drop(lock);
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// How long a master that handed its group over and restarted leaves the lock to a standby.
const HAND_OVER_WAIT: Duration = Duration::from_secs(10);

/// Waits until a standby has taken the group over from the master this process was in
/// `epoch` (the group's epoch moved on), or `HAND_OVER_WAIT` passed (no standby took it): a
/// restarted master must not win its own lock back before the standby it handed over to.
async fn yield_to_standby(dir: &Path, epoch: u64, poll: Duration, shutdown: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + HAND_OVER_WAIT;
    tracing::info!(
        epoch,
        "restarted after handing the group over: leaving the lock to a standby"
    );
    while tokio::time::Instant::now() < deadline {
        if matches!(current_epoch(dir), Ok(Some(now)) if now > epoch) {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll.min(Duration::from_millis(100))) => {}
            _ = shutdown.cancelled() => return,
        }
    }
    tracing::warn!(
        epoch,
        "no standby took the group over; trying the lock again"
    );
}

/// Advances the group's epoch, kept in `DIR/epoch`, and returns the new one. Only the lock
/// holder calls this; the file is replaced atomically and synced, so a crash leaves either the
/// old or the new number.
fn next_epoch(dir: &Path) -> std::io::Result<u64> {
    let next = current_epoch(dir)?.unwrap_or(0) + 1;
    let tmp = dir.join("epoch.tmp");
    {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, format!("{next}\n").as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("epoch"))?;
    File::open(dir)?.sync_all()?;
    Ok(next)
}

/// The group's epoch as `DIR/epoch` holds it (`None` before the first master).
fn current_epoch(dir: &Path) -> std::io::Result<Option<u64>> {
    let path = dir.join("epoch");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: {e}; delete it to start again from epoch 1",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_a_replaced_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = FileLock::try_acquire(&path).unwrap().expect("free");
        assert!(first.still_held());
        assert!(FileLock::try_acquire(&path).unwrap().is_none(), "held");
        drop(first);
        let second = FileLock::try_acquire(&path)
            .unwrap()
            .expect("released on drop");
        std::fs::remove_file(&path).unwrap();
        assert!(!second.still_held(), "the file was removed");
        std::fs::write(&path, b"").unwrap();
        assert!(
            !second.still_held(),
            "a new file at the path is another lock"
        );
    }

    #[test]
    fn epochs_count_up_and_a_garbled_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(current_epoch(dir.path()).unwrap(), None);
        assert_eq!(next_epoch(dir.path()).unwrap(), 1);
        assert_eq!(next_epoch(dir.path()).unwrap(), 2);
        assert_eq!(current_epoch(dir.path()).unwrap(), Some(2));
        std::fs::write(dir.path().join("epoch"), b"x").unwrap();
        let e = next_epoch(dir.path()).unwrap_err().to_string();
        assert!(e.contains("delete it"), "{e}");
    }
}
