//! Reading the config file and the key files it names: regular files only, and no more bytes
//! than such a file can hold. A FIFO would block the reader until someone writes to it, and
//! /dev/zero or /dev/urandom would be read until memory runs out; both are refused before a
//! single byte is read.
//!
//! The type is checked on the path first, so that opening cannot block or touch a device, and
//! again on the open descriptor (with O_NONBLOCK, so that a file swapped for a FIFO in between
//! cannot block the open either): what is read is what was checked.
//!
//! A regular file can still hang on a stuck network mount. Reads are made on a thread that is
//! not the data path's, and `read_under_way_for` tells that thread's watcher how long the read
//! under way has taken, so it can give up on I/O without timing the parsing around it.

use std::fs::Metadata;
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the file read under way in this process has taken so far; None when none is. The
/// daemon reads one config at a time (shell::config_read), so one slot is enough.
pub fn read_under_way_for() -> Option<Duration> {
    match READ_STARTED_MS.load(Ordering::Relaxed) {
        0 => None,
        started => Some(Duration::from_millis(
            elapsed_ms().saturating_sub(started - 1),
        )),
    }
}

/// When the read under way started, in ms since EPOCH plus one; 0 when none is.
static READ_STARTED_MS: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn elapsed_ms() -> u64 {
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
}

/// The text of the regular file at `path`, refused when it is anything else or larger than
/// `max_bytes`.
pub(crate) fn read_regular_file(path: &Path, max_bytes: u64) -> io::Result<String> {
    READ_STARTED_MS.store(elapsed_ms() + 1, Ordering::Relaxed);
    let text = read_checked(path, max_bytes);
    READ_STARTED_MS.store(0, Ordering::Relaxed);
    text
}

fn read_checked(path: &Path, max_bytes: u64) -> io::Result<String> {
    check(&std::fs::metadata(path)?, max_bytes)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    check(&file.metadata()?, max_bytes)?;
    let mut bytes = Vec::new();
    // One byte more than allowed tells a file that grew since the check.
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(max_bytes));
    }
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn check(metadata: &Metadata, max_bytes: u64) -> io::Result<()> {
    let kind = metadata.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    };
    if let Some(what) = what {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not a regular file"),
        ));
    }
    if metadata.len() > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(())
}

fn too_large(max_bytes: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than the {max_bytes} bytes such a file can hold"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dhtun-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let path = scratch("key");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(read_regular_file(&path, 4).unwrap(), "abc\n");
    }

    #[test]
    fn a_file_over_the_cap_is_refused() {
        let path = scratch("big");
        std::fs::write(&path, "abcde").unwrap();
        let e = read_regular_file(&path, 4).unwrap_err();
        assert!(e.to_string().contains("larger than the 4 bytes"), "{e}");
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let path = scratch("fifo");
        let _ = std::fs::remove_file(&path);
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_regular_file(&path, 4096).unwrap_err();
        assert!(e.to_string().contains("a FIFO, not a regular file"), "{e}");
    }

    #[test]
    fn devices_and_directories_are_refused() {
        for (path, what) in [
            ("/dev/zero", "a character device"),
            ("/dev/urandom", "a character device"),
            ("/tmp", "a directory"),
        ] {
            let e = read_regular_file(Path::new(path), 4096).unwrap_err();
            assert!(e.to_string().starts_with(what), "{path}: {e}");
        }
    }
}
