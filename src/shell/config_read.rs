//! Reading the config file, and the key files it names, away from the event loop. A file system
//! that hangs (a stuck network mount, a FUSE daemon) could otherwise stop every packet for as
//! long as it hangs; here a read runs on a thread of its own and is given READ_TIMEOUT. One read
//! runs at a time: one that has not returned blocks the next, so a stuck mount costs one thread,
//! not one per reload.

use crate::config::{Config, ConfigError};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a config and its key files may take to read. Local files take microseconds; this
/// leaves a slow network mount its chance and still answers `dhtun reload` well within the
/// client's wait.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the config at `path` for `dhtun up`, on a thread, waiting at most READ_TIMEOUT.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let owned = path.to_owned();
    spawn(move || {
        let _ = tx.send(Config::load(&owned));
    })?;
    match rx.recv_timeout(READ_TIMEOUT) {
        Ok(loaded) => Ok(loaded?),
        Err(_) => Err(timed_out(path).into()),
    }
}

/// Who asked for a reload, to be told how it went.
pub enum Asker {
    Control(oneshot::Sender<String>),
    Signal,
}

/// The daemon's config reads, at most one at a time.
#[derive(Default)]
pub struct ConfigReader {
    pending: Option<Pending>,
    /// The thread of a read that timed out, while it has not returned.
    stuck: Option<(PathBuf, JoinHandle<()>)>,
}

struct Pending {
    path: PathBuf,
    result: oneshot::Receiver<Result<Config, ConfigError>>,
    deadline: tokio::time::Instant,
    thread: JoinHandle<()>,
    asker: Asker,
}

impl ConfigReader {
    /// Starts reading `path` for `asker`; hands `asker` back with the reason when a read is
    /// already under way or an earlier one is still stuck.
    pub fn start(&mut self, path: &Path, asker: Asker) -> Result<(), (Asker, String)> {
        if self.pending.is_some() {
            return Err((asker, "a reload is already under way; try again".into()));
        }
        if let Some((stuck_path, thread)) = &self.stuck {
            if !thread.is_finished() {
                let message = format!(
                    "{}: the last read has not returned after {} s (a stuck file system?); \
                     nothing was changed",
                    stuck_path.display(),
                    READ_TIMEOUT.as_secs()
                );
                return Err((asker, message));
            }
            self.stuck = None;
        }
        let (tx, result) = oneshot::channel();
        let owned = path.to_owned();
        let thread = match spawn(move || {
            let _ = tx.send(Config::load(&owned));
        }) {
            Ok(thread) => thread,
            Err(e) => return Err((asker, format!("{e:#}"))),
        };
        self.pending = Some(Pending {
            path: path.to_owned(),
            result,
            deadline: tokio::time::Instant::now() + READ_TIMEOUT,
            thread,
            asker,
        });
        Ok(())
    }

    /// The outcome of the read under way, and who asked for it; never, while none is.
    /// Cancel-safe: a call dropped before it finished leaves the read pending.
    pub async fn finished(&mut self) -> (Result<Config, ConfigError>, Asker) {
        let Some(pending) = self.pending.as_mut() else {
            return std::future::pending().await;
        };
        let outcome = tokio::time::timeout_at(pending.deadline, &mut pending.result).await;
        let Some(pending) = self.pending.take() else {
            return std::future::pending().await;
        };
        let loaded = match outcome {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(_)) => Err(ConfigError {
                path: pending.path.clone(),
                line: None,
                message: "the thread reading the config ended without an answer".into(),
            }),
            Err(_) => {
                let error = timed_out(&pending.path);
                self.stuck = Some((pending.path, pending.thread));
                Err(error)
            }
        };
        (loaded, pending.asker)
    }
}

fn spawn(read: impl FnOnce() + Send + 'static) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("config-read".into())
        .spawn(read)
        .map_err(|e| anyhow::anyhow!("starting a thread to read the config: {e}"))
}

fn timed_out(path: &Path) -> ConfigError {
    ConfigError {
        path: path.to_owned(),
        line: None,
        message: format!(
            "reading the config and its key files took over {} s (a stuck file system?)",
            READ_TIMEOUT.as_secs()
        ),
    }
}
