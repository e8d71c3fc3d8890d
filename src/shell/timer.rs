//! A one-shot timer with microsecond resolution (a Linux timerfd) for the event loop.
//!
//! tokio's timers round to whole milliseconds, and pacing a peer pauses the TUN reads for tens
//! of microseconds to a millisecond: at 2 Gbit/s one 32 KiB burst lasts 130 µs. A millisecond
//! pause there would let the kernel drop seven bursts' worth at the TUN queue.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// Shortest time a deadline is armed for: zero would disarm the timer instead of firing it.
const MIN_ARM: Duration = Duration::from_micros(1);
/// A new deadline this close to the armed one leaves the timer as it is. Arming costs a
/// syscall and, in a VM, a trap to program the timer: on the bench, re-arming on every loop
/// turn of a pause took a third of the daemon's CPU.
const REARM_TOLERANCE: Duration = Duration::from_micros(5);

pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
    armed_for: Cell<Option<Instant>>,
}

impl PreciseTimer {
    pub fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; the result is checked before use.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd keeps the descriptor open, unchanged, until it is dropped, which
        // happens only when this AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            fd,
            armed_for: Cell::new(None),
        })
    }

    /// Fires once at `deadline` (at once if it has passed), replacing any earlier deadline.
    pub fn arm(&self, deadline: Instant) -> io::Result<()> {
        let unchanged = self
            .armed_for
            .get()
            .is_some_and(|armed| armed.max(deadline) - armed.min(deadline) < REARM_TOLERANCE);
        if unchanged {
            return Ok(());
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_ARM);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(wait.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` outlives the call; a null old-value pointer is allowed.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed_for.set(Some(deadline));
        Ok(())
    }

    /// Waits until the armed deadline passes.
    pub async fn expired(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: the buffer is 8 bytes, the size a timerfd read needs.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            if n == expirations.len() as isize {
                self.armed_for.set(None);
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::WouldBlock {
                return Err(error);
            }
            guard.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_after_its_deadline_and_rearming_replaces_it() {
        let timer = PreciseTimer::new().expect("timerfd");
        let start = Instant::now();
        timer
            .arm(start + Duration::from_secs(3600))
            .expect("arm far");
        timer
            .arm(start + Duration::from_micros(300))
            .expect("arm near");
        timer.expired().await.expect("expired");
        assert!(start.elapsed() >= Duration::from_micros(300));
        // A deadline in the past fires at once instead of disarming the timer.
        timer.arm(start).expect("arm past");
        tokio::time::timeout(Duration::from_secs(5), timer.expired())
            .await
            .expect("a past deadline fires")
            .expect("expired");
    }
}
