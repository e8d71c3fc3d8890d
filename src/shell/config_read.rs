//! Reading the config file, and the key files it names, away from the event loop. A file system
//! that hangs (a stuck network mount, a FUSE daemon) could otherwise stop every packet for as
//! long as it hangs; here a config is read and parsed on a thread of its own, and a file read
//! that takes over READ_TIMEOUT is given up on (parsing a large config is not timed). One read
//! runs at a time: one that has not returned blocks the next, so a stuck mount costs one thread,
//! not one per reload.

use crate::config::{read_under_way_for, Config, ConfigError};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long one read of a config or key file may take. Local files take microseconds; this
/// leaves a slow network mount its chance and still answers `dhtun reload` well within the
/// client's wait.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the thread's read is looked at while it runs.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Reads the config at `path` for `dhtun up`, on a thread, waiting at most READ_TIMEOUT.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let owned = path.to_owned();
    spawn(move || {
        let _ = tx.send(Config::load(&owned));
    })?;
    loop {
        match rx.recv_timeout(WATCH_INTERVAL) {
            Ok(loaded) => return Ok(loaded?),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !read_is_stuck() => {}
            Err(_) => return Err(timed_out(path).into()),
        }
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
        let outcome = loop {
            match tokio::time::timeout(WATCH_INTERVAL, &mut pending.result).await {
                Ok(answer) => break Some(answer),
                Err(_) if read_is_stuck() => break None,
                Err(_) => {}
            }
        };
        let Some(pending) = self.pending.take() else {
            return std::future::pending().await;
        };
        let loaded = match outcome {
            Some(Ok(loaded)) => loaded,
            Some(Err(_)) => Err(ConfigError {
                path: pending.path.clone(),
                line: None,
                message: "the thread reading the config ended without an answer".into(),
            }),
            None => {
                let error = timed_out(&pending.path);
                self.stuck = Some((pending.path, pending.thread));
                Err(error)
            }
        };
        (loaded, pending.asker)
    }
}

fn read_is_stuck() -> bool {
    read_under_way_for().is_some_and(|took| took > READ_TIMEOUT)
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
            "reading the config or a key file took over {} s (a stuck file system?)",
            READ_TIMEOUT.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn one_read_at_a_time_and_its_outcome_goes_to_its_asker() {
        let path = Path::new("/nonexistent/dhtun-config-read-test.toml");
        let mut reader = ConfigReader::default();
        assert!(reader.start(path, Asker::Signal).is_ok());
        let (reply, _answer) = oneshot::channel();
        match reader.start(path, Asker::Control(reply)) {
            Err((Asker::Control(_), message)) => {
                assert!(message.contains("already under way"), "{message}")
            }
            _ => panic!("a second read while one is under way must be refused to its asker"),
        }
        let (read, asker) = reader.finished().await;
        assert!(matches!(asker, Asker::Signal));
        let error = read.expect_err("a missing file is an error");
        assert!(error.message.contains("cannot read config"), "{error}");
        assert!(
            reader.start(path, Asker::Signal).is_ok(),
            "the next read may start"
        );
    }
}
