//! Running commands from a test: to completion, or bounded by a timeout that panics or returns
//! an error, and `describe` for messages about their output.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run a command to completion (no timeout; for commands that cannot block).
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command, killing it if it has not finished within `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    wait_output(child, timeout, &format!("{cmd:?}"))
}

/// Collect a child's output, killing it after `timeout` (then the test fails).
pub fn wait_output(child: Child, timeout: Duration, what: &str) -> Output {
    try_wait_output(child, timeout).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Like `run_timeout`, but a timeout is an `Err` instead of a panic.
pub fn try_run_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    try_wait_output(child, timeout)
}

/// Collect a child's output; after `timeout` kill it and return what it printed as an error.
pub fn try_wait_output(mut child: Child, timeout: Duration) -> Result<Output, String> {
    // Read the pipes on threads so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = std::io::Read::read_to_end(p, &mut buf);
        }
        buf
    });
    let err_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = std::io::Read::read_to_end(p, &mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "did not finish within {timeout:?}, killed it; stdout: {:?}; stderr: {:?}",
            String::from_utf8_lossy(&stdout).trim(),
            String::from_utf8_lossy(&stderr).trim()
        )),
    }
}

/// "exit status N; stdout: ...; stderr: ..." for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}; stdout: {:?}; stderr: {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}
