//! Claims on the table, mark and priority of a full tunnel, shared by every dhtun daemon on the
//! host, so two daemons that start at once never pick the same values.
//!
//! Two files in the run directory (`DHTUN_RUN_DIR`, or /run/dhtun, root's and mode 0700, so a
//! user without root can neither create nor hold them):
//! - `.policy.lock`, held with flock(2) while a daemon reads what is taken and claims its pick.
//!   Only this serialises the pick: the kernel's dumps cannot, since another daemon may have
//!   picked and not yet added its routes and rules.
//! - `.policy-NETNS-TABLE.claim`, one per full tunnel, holding "table mark priority" and kept
//!   locked by its daemon for its whole life. flock is released by the kernel when the daemon
//!   dies, however it dies, so a locked claim is a live daemon and an unlocked one is left by a
//!   dead one (removed by the next pick). NETNS is the inode of the network namespace, since
//!   tables are per namespace but the run directory is shared by all of them.
//!
//! flock and not fcntl locks: fcntl locks belong to the process and are dropped when any of
//! its descriptors of the file closes; flock belongs to the open file, which the daemon keeps.

use crate::shell::control::run_dir;
use crate::shell::route_plan::FullTunnel;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a daemon waits for another to finish its pick (a few netlink dumps, milliseconds).
const PICK_LOCK_WAIT: Duration = Duration::from_secs(10);
const PICK_LOCK_POLL: Duration = Duration::from_millis(5);
const PICK_LOCK_FILE: &str = ".policy.lock";

/// `.policy.lock`, held until dropped.
#[derive(Debug)]
pub struct PickLock {
    _file: File,
}

/// A daemon's claim on its full tunnel's values, held until dropped (or the daemon dies).
#[derive(Debug)]
pub struct Claim {
    _file: File,
}

impl PickLock {
    /// Waits (bounded) for `.policy.lock` in the run directory.
    pub async fn acquire() -> io::Result<Self> {
        Self::acquire_in(&run_dir()).await
    }

    pub async fn acquire_in(dir: &Path) -> io::Result<Self> {
        prepare_dir(dir)?;
        let file = open_own(&dir.join(PICK_LOCK_FILE))?;
        let deadline = Instant::now() + PICK_LOCK_WAIT;
        loop {
            match try_flock(&file) {
                Ok(true) => return Ok(Self { _file: file }),
                Ok(false) if Instant::now() < deadline => tokio::time::sleep(PICK_LOCK_POLL).await,
                Ok(false) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{} stayed locked for {PICK_LOCK_WAIT:?} by another dhtun daemon",
                            dir.join(PICK_LOCK_FILE).display()
                        ),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The full tunnels that live daemons of network namespace `netns` claimed. Claims whose
    /// daemon is gone are removed (safe: claims are only made under this lock).
    pub fn live_claims(&self, dir: &Path, netns: u64) -> Vec<FullTunnel> {
        let prefix = format!(".policy-{netns}-");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut live = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(&prefix) || !name.ends_with(".claim") {
                continue;
            }
            let path = entry.path();
            let Ok(mut file) = File::open(&path) else {
                continue;
            };
            match try_flock(&file) {
                Ok(true) => {
                    let _ = std::fs::remove_file(&path);
                }
                Ok(false) => {
                    let mut text = String::new();
                    if file.read_to_string(&mut text).is_ok() {
                        if let Some(full) = parse_claim(&text) {
                            live.push(full);
                        }
                    }
                }
                Err(_) => {}
            }
        }
        live
    }

    /// Claims `full` in network namespace `netns`.
    pub fn claim(&self, dir: &Path, netns: u64, full: FullTunnel) -> io::Result<Claim> {
        let path = claim_path(dir, netns, full.table);
        let mut file = open_own(&path)?;
        if !try_flock(&file)? {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is held by another daemon", path.display()),
            ));
        }
        file.set_len(0)?;
        writeln!(file, "{} {} {}", full.table, full.fwmark, full.priority)?;
        Ok(Claim { _file: file })
    }
}

/// Whether a live daemon of network namespace `netns` claimed `table`. Call it holding the
/// [`PickLock`]: it takes the claim's lock for a moment.
pub fn table_claimed(dir: &Path, netns: u64, table: u32) -> bool {
    let Ok(file) = File::open(claim_path(dir, netns, table)) else {
        return false;
    };
    // Locked by someone: a live daemon. Taking the lock ourselves would race a claimer, so
    // give it back at once (dropping the file releases it).
    matches!(try_flock(&file), Ok(false))
}

/// The inode of the caller's network namespace.
pub fn netns_id() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/self/ns/net")?.ino())
}

fn claim_path(dir: &Path, netns: u64, table: u32) -> PathBuf {
    dir.join(format!(".policy-{netns}-{table}.claim"))
}

fn parse_claim(text: &str) -> Option<FullTunnel> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<u32>().ok());
    Some(FullTunnel {
        table: fields.next()??,
        fwmark: fields.next()??,
        priority: fields.next()??,
    })
}

/// Opens (creating, mode 0600) a lock file that must be ours: not a symbolic link, owned by
/// our user, so one planted by another user cannot be held against us.
fn open_own(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if file.metadata()?.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} belongs to another user", path.display()),
        ));
    }
    Ok(file)
}

/// flock(LOCK_EX | LOCK_NB): Ok(false) when another open file holds the lock.
fn try_flock(file: &File) -> io::Result<bool> {
    // SAFETY: the descriptor is open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Creates `dir` (mode 0700) when it is missing.
fn prepare_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: FullTunnel = FullTunnel {
        table: 51820,
        fwmark: 51820,
        priority: 32765,
    };

    #[tokio::test]
    async fn a_claim_is_live_while_held_and_swept_once_dropped() {
        let dir = std::env::temp_dir().join(format!("dhtun-claim-{}", std::process::id()));
        let lock = PickLock::acquire_in(&dir).await.unwrap();
        let claim = lock.claim(&dir, 7, FULL).unwrap();
        assert_eq!(lock.live_claims(&dir, 7), vec![FULL]);
        assert!(lock.live_claims(&dir, 8).is_empty(), "another namespace");
        assert!(table_claimed(&dir, 7, 51820));
        assert!(!table_claimed(&dir, 7, 51821));
        drop(claim);
        assert!(!table_claimed(&dir, 7, 51820));
        assert!(lock.live_claims(&dir, 7).is_empty());
        assert!(
            !claim_path(&dir, 7, 51820).exists(),
            "a dead claim is removed"
        );
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
