//! The keys of userspace mode: `[interface] mode` and `socks5_listen`, `[[forward]]` and
//! `[[expose]]`. They are refused in TUN mode, where the kernel's own stack serves the overlay.

use super::{Ctx, InterfaceConfig};
use crate::config::ConfigError;
use crate::core::limits::{MAX_EXPOSES, MAX_FORWARDS};
use serde::Deserialize;
use std::net::SocketAddr;
use toml::Spanned;

/// Where the overlay's addresses live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A TUN device: the kernel's TCP/IP stack serves the overlay (needs CAP_NET_ADMIN).
    #[default]
    Tun,
    /// No device: a TCP/IP stack inside the daemon (smoltcp), reached through forwards, exposes
    /// and the SOCKS5 proxy. Needs no privileges.
    Userspace,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tun => "tun",
            Mode::Userspace => "userspace",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `[[forward]]`: a local port whose connections (or datagrams) are carried to an overlay
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub listen: SocketAddr,
    pub to: SocketAddr,
    pub protocol: Protocol,
}

/// `[[expose]]`: an overlay port whose connections (or datagrams) are handed to a local
/// service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expose {
    pub port: u16,
    pub to: SocketAddr,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserspaceConfig {
    pub socks5_listen: Option<SocketAddr>,
    pub forwards: Vec<Forward>,
    pub exposes: Vec<Expose>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    listen: Spanned<String>,
    to: Spanned<String>,
    protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpose {
    port: Spanned<u16>,
    to: Spanned<String>,
    protocol: Option<Spanned<String>>,
}

impl Ctx<'_> {
    pub(super) fn mode(&self, raw: Option<&Spanned<String>>) -> Result<Mode, ConfigError> {
        match raw.map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("tun", _)) => Ok(Mode::Tun),
            Some(("userspace", _)) => Ok(Mode::Userspace),
            Some((other, span)) => Err(self.err(
                Some(span),
                format!("mode {other:?}: use \"tun\" or \"userspace\""),
            )),
        }
    }

    pub(super) fn userspace(
        &self,
        interface: &InterfaceConfig,
        socks5_listen: Option<Spanned<String>>,
        forwards: Vec<Spanned<RawForward>>,
        exposes: Vec<Spanned<RawExpose>>,
    ) -> Result<UserspaceConfig, ConfigError> {
        if interface.mode == Mode::Tun {
            let first = socks5_listen
                .as_ref()
                .map(|s| ("socks5_listen", s.span()))
                .or(forwards.first().map(|f| ("[[forward]]", f.span())))
                .or(exposes.first().map(|e| ("[[expose]]", e.span())));
            if let Some((what, span)) = first {
                return Err(self.err(
                    Some(span),
                    format!(
                        "{what} works only in userspace mode: add mode = \"userspace\" to \
                         [interface] (a TUN interface is reached through the kernel instead)"
                    ),
                ));
            }
        }
        if let Some(extra) = forwards.get(MAX_FORWARDS) {
            return Err(self.err(
                Some(extra.span()),
                format!("more than {MAX_FORWARDS} [[forward]] entries"),
            ));
        }
        if let Some(extra) = exposes.get(MAX_EXPOSES) {
            return Err(self.err(
                Some(extra.span()),
                format!("more than {MAX_EXPOSES} [[expose]] entries"),
            ));
        }
        let socks5_listen = socks5_listen
            .map(|s| self.socket_address(&s, "socks5_listen", "127.0.0.1:1080"))
            .transpose()?;
        let forwards = forwards
            .into_iter()
            .map(|f| {
                let f = f.into_inner();
                Ok(Forward {
                    listen: self.socket_address(&f.listen, "listen", "127.0.0.1:8022")?,
                    to: self.socket_address(&f.to, "to", "100.64.0.2:22")?,
                    protocol: self.protocol(f.protocol.as_ref())?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let mut parsed: Vec<Expose> = Vec::with_capacity(exposes.len());
        for raw in exposes {
            let raw = raw.into_inner();
            let port_span = raw.port.span();
            let expose = Expose {
                port: *raw.port.get_ref(),
                to: self.socket_address(&raw.to, "to", "127.0.0.1:22")?,
                protocol: self.protocol(raw.protocol.as_ref())?,
            };
            if expose.port == 0 {
                return Err(self.err(Some(port_span), "expose port 0: use 1..=65535"));
            }
            if parsed
                .iter()
                .any(|e| e.port == expose.port && e.protocol == expose.protocol)
            {
                return Err(self.err(
                    Some(port_span),
                    format!(
                        "{} port {} is exposed twice",
                        expose.protocol.as_str(),
                        expose.port
                    ),
                ));
            }
            parsed.push(expose);
        }
        Ok(UserspaceConfig {
            socks5_listen,
            forwards,
            exposes: parsed,
        })
    }

    fn socket_address(
        &self,
        text: &Spanned<String>,
        key: &str,
        example: &str,
    ) -> Result<SocketAddr, ConfigError> {
        text.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.err(
                Some(text.span()),
                format!(
                    "{key} {:?}: expected IP:PORT, e.g. {example}",
                    text.get_ref()
                ),
            )
        })
    }

    fn protocol(&self, raw: Option<&Spanned<String>>) -> Result<Protocol, ConfigError> {
        match raw.map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("tcp", _)) => Ok(Protocol::Tcp),
            Some(("udp", _)) => Ok(Protocol::Udp),
            Some((other, span)) => Err(self.err(
                Some(span),
                format!("protocol {other:?}: use \"tcp\" or \"udp\""),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::keys::SecretKey;
    use std::path::Path;

    const KEY_A: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn parse(extra_interface: &str, sections: &str) -> Result<Config, ConfigError> {
        let peer = SecretKey::from_seed([2; 32]).public_key().to_base64();
        let text = format!(
            "[interface]\nprivate_key = \"{KEY_A}\"\naddress = [\"100.64.0.1/24\"]\n\
             {extra_interface}\n[[peer]]\npublic_key = \"{peer}\"\n{sections}"
        );
        Config::parse(Path::new("/etc/dhtun/t.toml"), &text)
    }

    #[test]
    fn userspace_keys_parse_with_defaults() {
        let config = parse(
            "mode = \"userspace\"\nsocks5_listen = \"127.0.0.1:1080\"\n",
            "[[forward]]\nlisten = \"127.0.0.1:8022\"\nto = \"100.64.0.2:22\"\n\
             [[forward]]\nlisten = \"127.0.0.1:5353\"\nto = \"[fd64::2]:53\"\nprotocol = \"udp\"\n\
             [[expose]]\nport = 80\nto = \"127.0.0.1:8080\"\n",
        )
        .unwrap();
        assert_eq!(config.interface.mode, Mode::Userspace);
        let u = &config.userspace;
        assert_eq!(u.socks5_listen, Some("127.0.0.1:1080".parse().unwrap()));
        assert_eq!(u.forwards[0].protocol, Protocol::Tcp);
        assert_eq!(u.forwards[1].protocol, Protocol::Udp);
        assert_eq!(u.forwards[1].to, "[fd64::2]:53".parse().unwrap());
        assert_eq!(u.exposes[0].port, 80);
        assert_eq!(
            parse("", "").unwrap().interface.mode,
            Mode::Tun,
            "tun is the default"
        );
    }

    #[test]
    fn userspace_keys_are_refused_in_tun_mode_at_their_line() {
        let err = parse("", "[[expose]]\nport = 80\nto = \"127.0.0.1:8080\"\n").unwrap_err();
        assert!(err.message.contains("only in userspace mode"), "{err}");
        assert_eq!(err.line, Some(7), "{err}");
        let err = parse("socks5_listen = \"127.0.0.1:1080\"\n", "").unwrap_err();
        assert!(err.message.contains("socks5_listen works only"), "{err}");
    }

    #[test]
    fn bad_userspace_values_say_what_is_wrong() {
        let cases = [
            ("mode = \"kernel\"\n", "", "use \"tun\" or \"userspace\""),
            (
                "mode = \"userspace\"\n",
                "[[forward]]\nlisten = \"8022\"\nto = \"100.64.0.2:22\"\n",
                "listen \"8022\": expected IP:PORT",
            ),
            (
                "mode = \"userspace\"\n",
                "[[forward]]\nlisten = \"127.0.0.1:1\"\nto = \"100.64.0.2:22\"\nprotocol = \"sctp\"\n",
                "use \"tcp\" or \"udp\"",
            ),
            (
                "mode = \"userspace\"\n",
                "[[expose]]\nport = 80\nto = \"127.0.0.1:1\"\n[[expose]]\nport = 80\nto = \"127.0.0.1:2\"\n",
                "tcp port 80 is exposed twice",
            ),
            (
                "mode = \"userspace\"\n",
                "[[expose]]\nport = 0\nto = \"127.0.0.1:1\"\n",
                "expose port 0",
            ),
            (
                "mode = \"userspace\"\n",
                "[[expose]]\nport = 1\nto = \"127.0.0.1:1\"\nhost = \"x\"\n",
                "unknown field",
            ),
        ];
        for (interface, sections, want) in cases {
            let err = parse(interface, sections).unwrap_err().to_string();
            assert!(err.contains(want), "{interface}{sections}: {err}");
        }
    }
}
