//! The `dhtun` command line, as docs/operations.md describes it (scripts, units and tests rely
//! on it: keep old forms working when it changes).

use clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
use clap::{CommandFactory, Parser, Subcommand};
use dhtun::core::keys::SecretKey;
use dhtun::onboarding::{peer_block, Endpoint};
use dhtun::shell::dht_node::check_bootstrap;
use dhtun::shell::{control, daemon, status::InterfaceStatus};
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dhtun",
    version,
    about = "A layer-3 VPN over Noise and UDP, with peers found by public key in the Mainline DHT, in constant memory",
    after_long_help = "The config file is described in dhtun.toml(5) and docs/configuration.md; the status \
                       fields, reload and systemd in docs/operations.md."
)]
struct Cli {
    /// Log level; overrides [interface] log_level, and RUST_LOG overrides both. Default: info
    #[arg(long, global = true, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new secret key: 32 random bytes, standard base64, one line
    Genkey,
    /// Read a secret key on stdin, print its public key the same way
    Pubkey,
    /// Print the [[peer]] block another node adds to its config to reach this one: the public
    /// key, the interface's addresses as allowed_ips, and the endpoint when given. Reads CONFIG
    /// only; no daemon need run
    Showpeer {
        /// This node's config file, e.g. /etc/dhtun/dhtun0.toml
        config: PathBuf,
        /// Where other nodes reach this one: an IP (the port is listen_port) or IP:PORT, e.g.
        /// 203.0.113.7; without it they find this node in the DHT by its public key
        #[arg(long, value_name = "IP[:PORT]")]
        endpoint: Option<Endpoint>,
    },
    /// Bring up the interface CONFIG describes; runs in the foreground until SIGINT/SIGTERM,
    /// then removes its routes and interface
    Up {
        /// The config file (TOML), e.g. /etc/dhtun/dhtun0.toml
        config: PathBuf,
    },
    /// Ask the running daemon of IFACE (in this network namespace) to stop, and wait until it
    /// has cleaned up
    Down {
        /// The interface name ([interface] name in its config)
        iface: String,
    },
    /// Re-read the config of the running daemon of IFACE in this network namespace (also on
    /// SIGHUP); a bad config is
    /// refused and the running state kept
    Reload {
        /// The interface name ([interface] name in its config)
        iface: String,
    },
    /// Show the interface and its peers (all interfaces when IFACE is absent)
    Status {
        /// The interface name; without it, every interface running in this network namespace
        iface: Option<String>,
        /// Print JSON (an array when IFACE is absent)
        #[arg(long)]
        json: bool,
    },
    /// Run a standalone Mainline DHT node (server mode), e.g. the bootstrap node of a private or
    /// isolated network; runs until SIGINT/SIGTERM
    DhtNode {
        /// The UDP address to serve on, e.g. 198.18.0.254:6881
        #[arg(long, value_name = "ADDR:PORT")]
        listen: SocketAddr,
        /// DHT nodes to join through, as in [dht] bootstrap: a host name or an IPv4 address,
        /// and a port, e.g. router.bittorrent.com:6881 or 198.18.0.254:6881; several after one
        /// flag, or the flag repeated. A name that does not resolve at start is logged and left
        /// out
        #[arg(long, value_name = "HOST:PORT", num_args = 1.., value_parser = check_bootstrap)]
        bootstrap: Vec<String>,
    },
    /// Print a completion script for SHELL, e.g. `dhtun completions bash >
    /// /etc/bash_completion.d/dhtun`
    Completions {
        /// The shell the script is for
        shell: CompletionShell,
    },
    /// Write the man pages (dhtun.8, one per subcommand, dhtun.toml.5) into DIR; for packaging
    #[command(hide = true)]
    Manpages {
        /// The directory to write them into; created if missing
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && e.kind() != DisplayHelpOnMissingArgumentOrSubcommand => {
            eprintln!("dhtun: {}", one_line(&e.render().to_string()));
            return ExitCode::FAILURE;
        }
        // --help, --version, or no command at all: clap prints them as it does.
        Err(e) => e.exit(),
    };
    match run(cli.command, cli.log_level) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error chain holds.
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("dhtun: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, log_level: Option<String>) -> anyhow::Result<()> {
    // `up` logs at the level its config asks for, unless the command line or RUST_LOG says
    // otherwise; every other command logs at the command line's level or info.
    if !matches!(command, Command::Up { .. }) {
        init_logging(log_level.as_deref().unwrap_or("info"));
    }
    match command {
        Command::Genkey => {
            let mut seed = [0u8; 32];
            rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut seed)
                .map_err(|e| anyhow::anyhow!("reading OS randomness: {e}"))?;
            println!("{}", SecretKey::from_seed(seed).to_base64());
            Ok(())
        }
        Command::Pubkey => {
            let mut text = String::new();
            std::io::stdin()
                .take(4096)
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("reading the secret key from stdin: {e}"))?;
            let key = SecretKey::from_base64(&text)
                .map_err(|e| anyhow::anyhow!("the secret key on stdin is {e}"))?;
            println!("{}", key.public_key().to_base64());
            Ok(())
        }
        Command::Showpeer { config, endpoint } => {
            let config = dhtun::shell::config_read::load(&config)?;
            print!(
                "{}",
                peer_block(&config, endpoint).map_err(|e| anyhow::anyhow!(e))?
            );
            Ok(())
        }
        Command::Up { config } => {
            let config = dhtun::shell::config_read::load(&config)?;
            init_logging(log_level.as_deref().unwrap_or(&config.interface.log_level));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(daemon::run(config))
        }
        Command::Down { iface } => {
            control::request(&iface, "down")?;
            Ok(())
        }
        Command::Reload { iface } => {
            print!("{}", control::request(&iface, "reload")?);
            Ok(())
        }
        Command::Status { iface, json } => status(iface, json),
        Command::DhtNode { listen, bootstrap } => {
            dhtun::shell::dht_node::run_dht_node(listen, &bootstrap)
        }
        Command::Completions { shell } => {
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(
                shell,
                &mut visible_command(),
                "dhtun",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Manpages { dir } => {
            for page in dhtun::manual::write_pages(Cli::command(), &dir)? {
                println!("{}", page.display());
            }
            Ok(())
        }
    }
}

fn status(iface: Option<String>, json: bool) -> anyhow::Result<()> {
    // One interface named: one object. None named: every running interface, as an array.
    let one = iface.is_some();
    let names = match iface {
        Some(name) => vec![name],
        None => control::interfaces(),
    };
    let mut statuses = Vec::with_capacity(names.len());
    let mut untrusted = Vec::new();
    let mut busy = Vec::new();
    for name in &names {
        // Listing them all, a socket left by a killed daemon is not an interface, nor one held
        // by someone else than root: skip them.
        let answer = if one {
            control::request(name, "status")?
        } else {
            match control::request_if_running(name, "status") {
                Ok(Some(answer)) => answer,
                Ok(None) => continue,
                Err(e) if e.downcast_ref::<control::UntrustedHolder>().is_some() => {
                    untrusted.push(name.as_str());
                    continue;
                }
                // A backlog kept full (a squatter that never accepts can do that too).
                Err(e) if e.downcast_ref::<control::Busy>().is_some() => {
                    busy.push(name.as_str());
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        let parsed: InterfaceStatus = serde_json::from_str(&answer).map_err(|e| {
            anyhow::anyhow!("the {name} daemon answered status with something unreadable: {e}")
        })?;
        statuses.push(parsed);
    }
    // The names were checked to be interface names: nothing else reaches the terminal.
    let mut skipped = Vec::new();
    if !untrusted.is_empty() {
        skipped.push(format!(
            "{} (held by processes not run by root)",
            untrusted.join(", ")
        ));
    }
    if !busy.is_empty() {
        skipped.push(format!(
            "{} (accepted no connection within 2 s)",
            busy.join(", ")
        ));
    }
    if !skipped.is_empty() {
        eprintln!(
            "dhtun: warning: skipped the control sockets of {}",
            skipped.join("; ")
        );
    }
    if json {
        let text = match statuses.first() {
            Some(status) if one => serde_json::to_string_pretty(status)?,
            _ => serde_json::to_string_pretty(&statuses)?,
        };
        println!("{text}");
    } else if statuses.is_empty() {
        println!("no dhtun interfaces are running");
    } else {
        let texts: Vec<String> = statuses.iter().map(InterfaceStatus::to_text).collect();
        print!("{}", texts.join("\n"));
    }
    Ok(())
}

/// The command line without its hidden subcommands, which clap_complete would offer.
fn visible_command() -> clap::Command {
    let full = Cli::command();
    let visible: Vec<clap::Command> = full
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let mut command = clap::Command::new("dhtun")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(visible);
    if let Some(about) = full.get_about() {
        command = command.about(about.clone());
    }
    command
}

/// A clap error as the one line the contract asks for: what was wrong and what was expected,
/// without the usage block (`--help` shows that).
fn one_line(rendered: &str) -> String {
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:"))
        .filter(|l| !l.starts_with("For more information"))
        .collect();
    let mut text = String::new();
    for line in lines {
        // A line that ends in a colon or a list in brackets continues the line before it.
        if !text.is_empty() {
            text.push_str(if text.ends_with(':') || line.starts_with('[') {
                " "
            } else {
                "; "
            });
        }
        text.push_str(line);
    }
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("{text} (see dhtun --help)")
}

fn init_logging(level: &str) {
    // mainline reports at ERROR what is normal in small or isolated DHTs (an empty routing
    // table); our own DHT code logs what matters and `dhtun status` shows the DHT's last error.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(format!("{level},mainline=off")))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
