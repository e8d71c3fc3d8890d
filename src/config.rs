//! The TOML config file of the contract: parsed, validated, and turned into the core's
//! `DeviceConfig`. Every error names the file and the line it is about.

use crate::core::keys::{PresharedKey, PublicKey, SecretKey};
use crate::core::limits::{
    DEFAULT_BATCH_SIZE, DEFAULT_BUSY_POLL_US, DEFAULT_MTU, DEFAULT_RING_BYTES,
    DEFAULT_RING_MAX_DELAY, DEFAULT_RING_SLOTS, MAX_ALLOWED_IPS, MAX_BATCH_SIZE, MAX_BUSY_POLL_US,
    MAX_CONFIG_FILE_BYTES, MAX_KEY_FILE_BYTES, MAX_MTU, MAX_PEERS, MAX_RECEIVE_BUFFER_BYTES,
    MAX_RING_BYTES, MAX_RING_MAX_DELAY_MS, MAX_RING_SLOTS, MIN_BATCH_SIZE, MIN_MTU,
    MIN_RECEIVE_BUFFER_BYTES, MIN_RING_BYTES, MIN_RING_SLOTS,
};
use crate::core::peer::PeerConfig;
use crate::shell::netlink::masked;
use ipnetwork::IpNetwork;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

mod routing;
pub use routing::TableSetting;

/// Default UDP port, the same as WireGuard's so firewall rules carry over.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;
pub const DEFAULT_INTERFACE: &str = "dhtun0";

/// A config error, displayed as `FILE:LINE: message` (or `FILE: message` without a line).
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub interface: InterfaceConfig,
    pub dht: DhtConfig,
    pub peers: Vec<PeerConfig>,
    /// `[[forward]]`, `[[expose]]` and `socks5_listen`: userspace mode only.
    pub userspace: UserspaceConfig,
}

#[derive(Debug, Clone)]
pub struct InterfaceConfig {
    pub name: String,
    pub secret_key: SecretKey,
    pub addresses: Vec<IpNetwork>,
    pub listen_port: u16,
    pub mtu: usize,
    /// Slots in each of the TUN->UDP and UDP->TUN rings.
    pub ring_slots: usize,
    /// Cap on the bytes queued in each ring.
    pub ring_bytes: usize,
    /// Packets that waited longer in a ring are dropped; None turns the check off.
    pub ring_max_delay: Option<Duration>,
    /// Datagrams per batched UDP syscall.
    pub batch_size: usize,
    /// SO_RCVBUF of the tunnel socket; None keeps the kernel's default.
    pub receive_buffer_bytes: Option<usize>,
    /// How long to keep polling for packets after a burst before sleeping; zero is off.
    pub busy_poll: Duration,
    /// Log level of the daemon (error, warn, info, debug, trace).
    pub log_level: String,
    /// Where to serve Prometheus metrics (text format over HTTP); off when None.
    pub metrics_listen: Option<SocketAddr>,
    /// Forward packets between two of our peers when one asks (this node is a relay).
    pub relay: bool,
    /// Pace peers whose loss reports show they cannot keep up (see core::pacer).
    pub pacing: bool,
    /// Where the tunnel's routes go (`table`).
    pub table: TableSetting,
    /// The mark of dhtun's own sockets (`fwmark`); 0 picks one when policy routing needs it.
    pub fwmark: u32,
    /// A TUN device (the default), or the overlay's TCP/IP stack inside the daemon.
    pub mode: Mode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtConfig {
    pub enabled: bool,
    pub bootstrap: Vec<String>,
    pub port: u16,
    /// Answer other nodes from the start (private networks); otherwise mainline starts
    /// read-only and switches once it sees it is reachable.
    pub server_mode: bool,
    /// How long to wait for one DHT node's answer; None keeps mainline's 2 s.
    pub request_timeout: Option<Duration>,
    /// Public records (the default), or private ones sealed with `network_secret_file`.
    pub privacy: crate::core::privacy::Privacy,
}

impl Config {
    /// Reads and validates the config at `path`, including the key files it names.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            files::read_regular_file(path, MAX_CONFIG_FILE_BYTES).map_err(|e| ConfigError {
                path: path.to_owned(),
                line: None,
                message: format!("cannot read config: {e}"),
            })?;
        Self::parse(path, &text)
    }

    /// Validates config `text`; `path` names it in errors and anchors relative key files.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let ctx = Ctx { path, text };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ctx.err(e.span(), one_line(e.message())))?;
        let interface_span = raw.interface.span();
        let mut raw_interface = raw.interface.into_inner();
        let socks5_listen = raw_interface.socks5_listen.take();
        let interface = ctx
            .interface(raw_interface)
            .map_err(|e| ctx.at_least_at(e, interface_span))?;
        let dht = match raw.dht {
            Some(raw_dht) => ctx.dht(raw_dht)?,
            None => DhtConfig::default(),
        };
        if let Some(extra) = raw.peer.get(MAX_PEERS) {
            return Err(ctx.err(Some(extra.span()), format!("more than {MAX_PEERS} peers")));
        }
        let own = interface.secret_key.public_key();
        let mut seen_keys: HashMap<PublicKey, usize> = HashMap::new();
        let mut seen_prefixes: HashMap<IpNetwork, usize> = HashMap::new();
        let mut peers = Vec::with_capacity(raw.peer.len());
        for (i, raw_peer) in raw.peer.into_iter().enumerate() {
            let raw_peer = raw_peer.into_inner();
            let key_span = raw_peer.public_key.span();
            let peer = ctx.peer(raw_peer)?;
            if peer.public_key == own {
                return Err(ctx.err(Some(key_span), "a peer has this interface's own public key"));
            }
            if let Some(first) = seen_keys.insert(peer.public_key, i) {
                return Err(ctx.err(
                    Some(key_span),
                    format!(
                        "peer {} is listed twice (also peer #{})",
                        peer.public_key,
                        first + 1
                    ),
                ));
            }
            for net in &peer.allowed_ips {
                if let Some(other) = seen_prefixes.insert(*net, i) {
                    let message = if other == i {
                        format!("allowed_ips {net} is listed twice for peer #{}", i + 1)
                    } else {
                        format!(
                            "allowed_ips {net} is given to two peers (#{} and #{})",
                            other + 1,
                            i + 1
                        )
                    };
                    return Err(ctx.err(Some(key_span), message));
                }
                if seen_prefixes.len() > MAX_ALLOWED_IPS {
                    return Err(ctx.err(
                        Some(key_span),
                        format!(
                            "more than {MAX_ALLOWED_IPS} allowed_ips in all (the most one \
                             interface supports)"
                        ),
                    ));
                }
            }
            peers.push(peer);
        }
        let userspace = ctx.userspace(&interface, socks5_listen, raw.forward, raw.expose)?;
        Ok(Config {
            path: path.to_owned(),
            interface,
            dht,
            peers,
            userspace,
        })
    }
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bootstrap: crate::shell::dht::default_bootstrap(),
            port: 0,
            server_mode: false,
            request_timeout: None,
            privacy: crate::core::privacy::Privacy::Public,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Spanned<RawInterface>,
    dht: Option<RawDht>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
    #[serde(default)]
    forward: Vec<Spanned<RawForward>>,
    #[serde(default)]
    expose: Vec<Spanned<RawExpose>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    name: Option<Spanned<String>>,
    private_key_file: Option<Spanned<String>>,
    private_key: Option<Spanned<String>>,
    address: Spanned<Vec<Spanned<String>>>,
    listen_port: Option<u16>,
    mtu: Option<Spanned<usize>>,
    ring_slots: Option<Spanned<usize>>,
    ring_bytes: Option<Spanned<usize>>,
    ring_max_delay_ms: Option<Spanned<u64>>,
    batch_size: Option<Spanned<usize>>,
    receive_buffer_bytes: Option<Spanned<usize>>,
    busy_poll_us: Option<Spanned<u64>>,
    log_level: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    relay: Option<bool>,
    pacing: Option<bool>,
    table: Option<Spanned<routing::RawTable>>,
    fwmark: Option<Spanned<u64>>,
    mode: Option<Spanned<String>>,
    socks5_listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDht {
    enabled: Option<bool>,
    bootstrap: Option<Vec<Spanned<String>>>,
    port: Option<u16>,
    server_mode: Option<bool>,
    request_timeout_ms: Option<u64>,
    network_secret_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    public_key: Spanned<String>,
    #[serde(default)]
    allowed_ips: Vec<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    preshared_key_file: Option<Spanned<String>>,
    preshared_key: Option<Spanned<String>>,
    persistent_keepalive: Option<Spanned<u64>>,
    relay: Option<bool>,
}

struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    /// `error` as it is, or, when it names no line, at the line where `span` starts.
    fn at_least_at(&self, error: ConfigError, span: std::ops::Range<usize>) -> ConfigError {
        match error.line {
            Some(_) => error,
            None => self.err(Some(span), error.message),
        }
    }

    fn err(&self, span: Option<std::ops::Range<usize>>, message: impl Into<String>) -> ConfigError {
        let line = span.map(|s| {
            let end = s.start.min(self.text.len());
            self.text.as_bytes()[..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        });
        ConfigError {
            path: self.path.to_owned(),
            line,
            message: message.into(),
        }
    }

    fn interface(&self, raw: RawInterface) -> Result<InterfaceConfig, ConfigError> {
        let name = match raw.name {
            Some(name) => {
                if let Some(problem) = checks::interface_name_problem(name.get_ref()) {
                    return Err(self.err(Some(name.span()), problem));
                }
                name.into_inner()
            }
            None => DEFAULT_INTERFACE.to_string(),
        };
        let secret_key = match (raw.private_key, raw.private_key_file) {
            (Some(key), None) => SecretKey::from_base64(key.get_ref())
                .map_err(|e| self.err(Some(key.span()), format!("private_key: {e}")))?,
            (None, Some(file)) => {
                let text = self.read_key_file(&file, "private_key_file")?;
                SecretKey::from_base64(&text).map_err(|e| {
                    self.err(
                        Some(file.span()),
                        format!("private_key_file {}: {e}", file.get_ref()),
                    )
                })?
            }
            (Some(key), Some(_)) => {
                return Err(self.err(
                    Some(key.span()),
                    "give either private_key or private_key_file, not both",
                ))
            }
            (None, None) => {
                return Err(self.err(None, "[interface] needs private_key_file or private_key"))
            }
        };
        if raw.address.get_ref().is_empty() {
            return Err(self.err(
                Some(raw.address.span()),
                "address: give at least one address",
            ));
        }
        let addresses = raw
            .address
            .get_ref()
            .iter()
            .map(|a| self.network(a, "address"))
            .collect::<Result<Vec<_>, _>>()?;
        let mtu = self.bounded(raw.mtu, "mtu", MIN_MTU..=MAX_MTU, DEFAULT_MTU)?;
        let ring_slots = self.bounded(
            raw.ring_slots,
            "ring_slots",
            MIN_RING_SLOTS..=MAX_RING_SLOTS,
            DEFAULT_RING_SLOTS,
        )?;
        let ring_bytes = self.bounded(
            raw.ring_bytes,
            "ring_bytes",
            MIN_RING_BYTES..=MAX_RING_BYTES,
            DEFAULT_RING_BYTES,
        )?;
        let default_delay = DEFAULT_RING_MAX_DELAY.as_millis() as u64;
        let ring_max_delay = self.bounded(
            raw.ring_max_delay_ms,
            "ring_max_delay_ms",
            0..=MAX_RING_MAX_DELAY_MS,
            default_delay,
        )?;
        let ring_max_delay = (ring_max_delay > 0).then(|| Duration::from_millis(ring_max_delay));
        let batch_size = self.bounded(
            raw.batch_size,
            "batch_size",
            MIN_BATCH_SIZE..=MAX_BATCH_SIZE,
            DEFAULT_BATCH_SIZE,
        )?;
        // Optional: unset keeps the kernel's default, so the fallback given to `bounded` below is
        // never used.
        let receive_buffer_bytes = raw
            .receive_buffer_bytes
            .map(|bytes| {
                self.bounded(
                    Some(bytes),
                    "receive_buffer_bytes",
                    MIN_RECEIVE_BUFFER_BYTES..=MAX_RECEIVE_BUFFER_BYTES,
                    MIN_RECEIVE_BUFFER_BYTES,
                )
            })
            .transpose()?;
        let busy_poll = Duration::from_micros(self.bounded(
            raw.busy_poll_us,
            "busy_poll_us",
            0..=MAX_BUSY_POLL_US,
            DEFAULT_BUSY_POLL_US,
        )?);
        let log_level = match raw.log_level {
            Some(level)
                if !["error", "warn", "info", "debug", "trace"]
                    .contains(&level.get_ref().as_str()) =>
            {
                return Err(self.err(
                    Some(level.span()),
                    format!(
                        "log_level {:?}: use error, warn, info, debug or trace",
                        level.get_ref()
                    ),
                ))
            }
            Some(level) => level.into_inner(),
            None => "info".to_string(),
        };
        let metrics_listen = raw
            .metrics_listen
            .map(|m| {
                m.get_ref().parse::<SocketAddr>().map_err(|_| {
                    self.err(
                        Some(m.span()),
                        format!(
                            "metrics_listen {:?}: expected IP:PORT, e.g. 127.0.0.1:9586",
                            m.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let table = match raw.table {
            Some(table) => table
                .get_ref()
                .parse()
                .map_err(|e| self.err(Some(table.span()), e))?,
            None => TableSetting::default(),
        };
        let fwmark = self.bounded(raw.fwmark, "fwmark", 0..=u64::from(u32::MAX), 0)? as u32;
        Ok(InterfaceConfig {
            name,
            secret_key,
            addresses,
            listen_port: raw.listen_port.unwrap_or(DEFAULT_LISTEN_PORT),
            mtu,
            ring_slots,
            ring_bytes,
            ring_max_delay,
            batch_size,
            receive_buffer_bytes,
            busy_poll,
            log_level,
            metrics_listen,
            relay: raw.relay.unwrap_or(false),
            pacing: raw.pacing.unwrap_or(true),
            table,
            fwmark,
            mode: self.mode(raw.mode.as_ref())?,
        })
    }

    fn peer(&self, raw: RawPeer) -> Result<PeerConfig, ConfigError> {
        let public_key = PublicKey::from_base64(raw.public_key.get_ref())
            .map_err(|e| self.err(Some(raw.public_key.span()), format!("peer public_key: {e}")))?;
        let allowed_ips = raw
            .allowed_ips
            .iter()
            .map(|a| self.network(a, "allowed_ips").map(masked))
            .collect::<Result<Vec<_>, _>>()?;
        let endpoint = raw
            .endpoint
            .map(|e| {
                let endpoint = e.get_ref().parse::<SocketAddr>().map_err(|_| {
                    self.err(
                        Some(e.span()),
                        format!("endpoint {:?}: expected IP:PORT, e.g. 198.18.0.2:51820 or [fd00::2]:51820", e.get_ref()),
                    )
                })?;
                match checks::endpoint_problem(endpoint) {
                    Some(problem) => Err(self.err(
                        Some(e.span()),
                        format!("endpoint {:?}: {problem}", e.get_ref()),
                    )),
                    None => Ok(endpoint),
                }
            })
            .transpose()?;
        let preshared_key = match (raw.preshared_key, raw.preshared_key_file) {
            (Some(key), None) => PresharedKey::from_base64(key.get_ref())
                .map_err(|e| self.err(Some(key.span()), format!("preshared_key: {e}")))?,
            (None, Some(file)) => {
                let text = self.read_key_file(&file, "preshared_key_file")?;
                PresharedKey::from_base64(&text).map_err(|e| {
                    self.err(
                        Some(file.span()),
                        format!("preshared_key_file {}: {e}", file.get_ref()),
                    )
                })?
            }
            (Some(key), Some(_)) => {
                return Err(self.err(
                    Some(key.span()),
                    "give either preshared_key or preshared_key_file, not both",
                ))
            }
            (None, None) => PresharedKey::default(),
        };
        let persistent_keepalive = match raw.persistent_keepalive {
            Some(secs) if *secs.get_ref() > u64::from(u16::MAX) => {
                return Err(self.err(
                    Some(secs.span()),
                    "persistent_keepalive: at most 65535 seconds (0 turns it off)",
                ))
            }
            Some(secs) if *secs.get_ref() > 0 => Some(Duration::from_secs(secs.into_inner())),
            _ => None,
        };
        Ok(PeerConfig {
            public_key,
            preshared_key,
            allowed_ips,
            endpoint,
            persistent_keepalive,
            relay: raw.relay.unwrap_or(false),
        })
    }

    /// A number that must lie in `range`: `default` when absent.
    fn bounded<T: PartialOrd + Copy + std::fmt::Display>(
        &self,
        value: Option<Spanned<T>>,
        key: &str,
        range: std::ops::RangeInclusive<T>,
        default: T,
    ) -> Result<T, ConfigError> {
        match value {
            Some(v) if !range.contains(v.get_ref()) => Err(self.err(
                Some(v.span()),
                format!(
                    "{key} {} is outside {}..={}",
                    v.get_ref(),
                    range.start(),
                    range.end()
                ),
            )),
            Some(v) => Ok(v.into_inner()),
            None => Ok(default),
        }
    }

    fn network(&self, text: &Spanned<String>, key: &str) -> Result<IpNetwork, ConfigError> {
        text.get_ref().parse::<IpNetwork>().map_err(|_| {
            self.err(
                Some(text.span()),
                format!("{key} {:?}: expected an address with an optional prefix length, e.g. 100.64.0.1/24 or fd64::1/64", text.get_ref()),
            )
        })
    }

    fn read_key_file(&self, file: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let mut path = PathBuf::from(file.get_ref());
        if path.is_relative() {
            if let Some(dir) = self.path.parent() {
                path = dir.join(path);
            }
        }
        files::read_regular_file(&path, MAX_KEY_FILE_BYTES)
            .map_err(|e| self.err(Some(file.span()), format!("{key} {}: {e}", path.display())))
    }
}

impl Ctx<'_> {
    /// `[dht]`: a bootstrap node of the wrong form is refused here, at its line, rather than
    /// leaving the daemon alone in a DHT of its own after a warning at start.
    fn dht(&self, raw: RawDht) -> Result<DhtConfig, ConfigError> {
        let default = DhtConfig::default();
        let bootstrap = match raw.bootstrap {
            None => default.bootstrap,
            Some(nodes) => nodes
                .into_iter()
                .map(|node| {
                    let span = node.span();
                    crate::shell::dht_node::check_bootstrap(node.get_ref()).map_err(|e| {
                        self.err(Some(span), format!("bootstrap {:?}: {e}", node.get_ref()))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(DhtConfig {
            enabled: raw.enabled.unwrap_or(default.enabled),
            bootstrap,
            port: raw.port.unwrap_or(default.port),
            server_mode: raw.server_mode.unwrap_or(default.server_mode),
            request_timeout: raw
                .request_timeout_ms
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis),
            privacy: match raw.network_secret_file {
                None => crate::core::privacy::Privacy::Public,
                Some(file) => crate::core::privacy::Privacy::Private(self.network_secret(&file)?),
            },
        })
    }

    /// The secret of a private network, read and checked as the key files are.
    fn network_secret(
        &self,
        file: &Spanned<String>,
    ) -> Result<crate::core::private_record::NetworkSecret, ConfigError> {
        let text = self.read_key_file(file, "network_secret_file")?;
        crate::core::private_record::NetworkSecret::from_base64(&text).map_err(|e| {
            self.err(
                Some(file.span()),
                format!("network_secret_file {}: {e}", file.get_ref()),
            )
        })
    }
}

/// toml's messages can be empty or span lines; errors here are always one line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "invalid TOML syntax".to_string()
    } else {
        lines.join("; ")
    }
}

mod checks;
mod files;
pub use files::read_under_way_for;
mod userspace;
pub use userspace::{Expose, Forward, Mode, Protocol, UserspaceConfig};
use userspace::{RawExpose, RawForward};

#[cfg(test)]
mod tests;
