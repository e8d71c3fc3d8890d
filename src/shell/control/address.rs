//! Where the control socket of an interface is: its abstract name in the caller's network
//! namespace, the path beside it, and the list of the interfaces whose daemons listen there.

use std::fmt;
use std::io;
use std::os::linux::fs::MetadataExt as _;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Abstract names of control sockets start with this; the interface name follows.
const ABSTRACT_PREFIX: &str = "dhtun/";
/// The directory of the path sockets when `DHTUN_RUN_DIR` is not set.
const DEFAULT_RUN_DIR: &str = "/run/dhtun";
/// The inode number kernels from 6.18 on give the initial network namespace.
const NET_NS_INIT_INO: u64 = 0xEFFF_FFF9;
/// `__SO_ACCEPTCON` in /proc/net/unix's Flags column: the socket listens.
const LISTENING_FLAG: u32 = 0x0001_0000;

/// Where the path sockets live: `DHTUN_RUN_DIR`, or /run/dhtun.
pub fn run_dir() -> PathBuf {
    env_run_dir().unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// Where the CLI reaches the daemon of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Place {
    /// The abstract socket of the caller's network namespace (the default).
    Abstract(String),
    /// `DHTUN_RUN_DIR/IFACE.sock`, when that variable is set.
    Path(PathBuf),
}

impl Place {
    pub(super) fn of(interface: &str) -> Self {
        match env_run_dir() {
            Some(dir) => Place::Path(socket_path(&dir, interface)),
            None => Place::Abstract(abstract_name(interface)),
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Abstract(name) => write!(f, "@{name}"),
            Place::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

pub(super) fn abstract_name(interface: &str) -> String {
    format!("{ABSTRACT_PREFIX}{interface}")
}

pub(super) fn abstract_address(name: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

/// The path socket a daemon keeps beside its abstract one.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum DaemonPath {
    /// In `DHTUN_RUN_DIR`, or in /run/dhtun in the initial network namespace: a live daemon
    /// there is one for the same interface, and this one must not start.
    Required(PathBuf),
    /// In /run/dhtun when the daemon cannot tell whether its namespace is the initial one
    /// (without CAP_SYS_PTRACE, on kernels before 6.18): taken when free, left to the daemon
    /// of another namespace that holds it.
    IfFree(PathBuf),
    /// None in other namespaces: /run/dhtun is shared by all of them.
    None,
}

pub(super) fn daemon_path(interface: &str) -> DaemonPath {
    let default = || socket_path(Path::new(DEFAULT_RUN_DIR), interface);
    match env_run_dir() {
        Some(dir) => DaemonPath::Required(socket_path(&dir, interface)),
        // A rootless daemon (userspace mode) cannot make /run/dhtun: its abstract socket is all.
        None if !nix::unistd::geteuid().is_root() => DaemonPath::None,
        None => match in_initial_namespace() {
            Some(true) => DaemonPath::Required(default()),
            Some(false) => DaemonPath::None,
            None => DaemonPath::IfFree(default()),
        },
    }
}

/// Where the daemon of `interface` is reached when an untrusted process holds its abstract name
/// (and `DHTUN_RUN_DIR` is not set): `/run/dhtun/net-INODE/IFACE.sock`, named by the inode of
/// the caller's network namespace, in a directory only root may enter. None when the namespace
/// cannot be read.
pub(super) fn fallback_path(interface: &str) -> Option<PathBuf> {
    let ns = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    let dir = Path::new(DEFAULT_RUN_DIR).join(format!("net-{}", ns.st_ino()));
    Some(socket_path(&dir, interface))
}

pub(super) fn socket_path(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("{interface}.sock"))
}

/// Creates `dir` (mode 0700) when it is missing. One that exists is left as it is: it may be
/// /tmp or any directory the user named in `DHTUN_RUN_DIR`.
pub(super) fn prepare_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Interfaces whose daemons listen where the CLI looks (the caller's namespace, or
/// `DHTUN_RUN_DIR`), sorted by name. In a directory, a socket left by a killed daemon is listed
/// too; the caller finds out that nobody answers.
pub fn interfaces() -> Vec<String> {
    let mut names = match env_run_dir() {
        Some(dir) => in_directory(&dir),
        None => std::fs::read_to_string("/proc/thread-self/net/unix")
            .map(|table| listening_abstract(&table))
            .unwrap_or_default(),
    };
    names.sort();
    names.dedup();
    names
}

fn env_run_dir() -> Option<PathBuf> {
    std::env::var_os("DHTUN_RUN_DIR")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

/// Whether this process runs in the initial network namespace: the one of pid 1 where we may
/// look (it takes the right to trace pid 1); else yes for the fixed inode number recent kernels
/// give the initial namespace, and no for a namespace named in /run/netns (`ip netns add`);
/// None when nothing tells.
fn in_initial_namespace() -> Option<bool> {
    let own = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    let same = |other: &std::fs::Metadata| {
        own.st_dev() == other.st_dev() && own.st_ino() == other.st_ino()
    };
    if let Ok(init) = std::fs::metadata("/proc/1/ns/net") {
        return Some(same(&init));
    }
    if own.st_ino() == NET_NS_INIT_INO {
        return Some(true);
    }
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| std::fs::metadata(entry.path()).is_ok_and(|ns| same(&ns)));
    named.then_some(false)
}

fn in_directory(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".sock"))
                .map(str::to_string)
        })
        .collect()
}

/// The interfaces of the listening control sockets in /proc/net/unix: lines of
/// `Num RefCount Protocol Flags Type St Inode Path`, abstract paths shown with a leading `@`.
fn listening_abstract(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let name = fields.get(7)?.strip_prefix('@')?;
            let interface = name.strip_prefix(ABSTRACT_PREFIX)?;
            (flags & LISTENING_FLAG != 0 && is_interface_name(interface))
                .then(|| interface.to_string())
        })
        .collect()
}

/// Whether `name` can be a Linux interface name as dhtun takes them: 1 to 15 bytes of ASCII
/// letters, digits, `_`, `.` and `-`, not `.` or `..`. Anyone may bind any abstract name, so
/// nothing else read from /proc/net/unix is listed (or printed).
fn is_interface_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn listening_control_sockets_are_found_in_proc_net_unix() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1001 @dhtun/dhtun0\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 1002 @dhtun/dhtun0\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1003 /run/dhtun/wg1.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1004 @other/x\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1005 @dhtun/a/b\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 1006\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1007 @dhtun/lab-p2\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1008 @dhtun/\x1b[31mevil\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1009 @dhtun/..\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1010 @dhtun/sixteen-bytes-xx\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1011 @dhtun/caf\u{e9}\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 1012 @dhtun/wg_1.x\n";
        assert_eq!(listening_abstract(table), ["dhtun0", "lab-p2", "wg_1.x"]);
    }

    #[test]
    fn only_the_initial_network_namespace_claims_the_shared_path() {
        if std::env::var_os("DHTUN_RUN_DIR").is_some() {
            return;
        }
        // The test runs in the initial namespace (as CI does) or cannot tell: never "no".
        assert_ne!(in_initial_namespace(), Some(false));
        // A thread of its own in a new, unnamed network namespace (root only; skipped
        // otherwise): it may not be able to tell, but it never takes itself for the initial one.
        let elsewhere = std::thread::spawn(|| {
            // SAFETY: unshare with a flag only; it moves this thread alone.
            (unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0)
                .then(|| (in_initial_namespace(), daemon_path("dhtun0")))
        })
        .join()
        .expect("namespace thread panicked");
        if let Some((initial, path)) = elsewhere {
            assert_ne!(
                initial,
                Some(true),
                "a new namespace taken for the initial one"
            );
            assert!(!matches!(path, DaemonPath::Required(_)), "{path:?}");
        }
    }

    #[test]
    fn a_missing_run_directory_is_made_private_and_an_existing_one_left_alone() {
        let base = std::env::temp_dir().join(format!("dhtun-rundir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let made = base.join("a/b");
        prepare_dir(&made).expect("create the run directory");
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode(&made).ok(), Some(0o700));
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_dir(&made).expect("an existing run directory is fine");
        assert_eq!(
            mode(&made).ok(),
            Some(0o755),
            "an existing directory was chmod-ed"
        );
        let _ = std::fs::remove_dir_all(&base);
    }
}
