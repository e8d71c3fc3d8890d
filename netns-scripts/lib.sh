# shellcheck shell=bash
# Shared helpers for the dhtun network-namespace scripts (lab.sh, demo.sh, bench.sh, test.sh).
# Source this file from a script that runs `set -euo pipefail`; it does nothing by itself.
#
# Two kinds of lab use these helpers. lab.sh builds the discovery lab (a hub namespace running a
# DHT bootstrap node and N peers that know each other by public key only); demo.sh runs it. The
# lab_* functions below build the static pair that bench.sh measures:
#
# A "lab" is two network namespaces A and B joined by a veth pair on the underlay
# 198.18.0.0/24 (A = .1, B = .2), with dhtun daemons whose overlay addresses are
# 100.64.0.1/24 + fd64::1/64 (A) and 100.64.0.2/24 + fd64::2/64 (B). Everything a lab
# creates is removed by lab_cleanup, which lab_init installs as an EXIT trap.
#
# Variables a caller may set before lab_init:
#   DHTUN_BIN   the dhtun binary (default: target/release/dhtun of this repository)
#   LAB_TAG     short word in every name (default: lab)
#   RUST_LOG    daemon log level (default: info)
#   LAB_IFACE_EXTRA  lines added to the [interface] section of every lab_config (e.g. ring sizes)

LAB_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB_TAG=${LAB_TAG:-lab}
LAB_ID=$$
LAB_WORK=""
LAB_NAMESPACES=()
LAB_DAEMON_PIDS=()
LAB_DAEMON_IFACES=()
LAB_DAEMON_NSES=()
LAB_DAEMON_LOGS=()

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# sudo_user_home - the home directory of the user who ran sudo, or nothing.
sudo_user_home() {
    [[ -n ${SUDO_USER:-} && ${SUDO_USER} != root ]] || return 0
    getent passwd "${SUDO_USER}" | cut -d: -f6
}

# no_arguments ARG... - for a script that takes none: -h/--help prints its `usage` and exits 0,
# anything else prints it to stderr and fails.
no_arguments() {
    (($# == 0)) && return 0
    other_option "$1"
}

# other_option OPTION - the end of a script's option loop, for an option it did not match:
# -h/--help prints the script's `usage` and exits 0; anything else prints it to stderr and fails.
other_option() {
    case $1 in
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown option: $1"
        ;;
    esac
}

need_root() {
    [[ ${EUID} -eq 0 ]] || die "$1 must run as root (it creates network namespaces); try: sudo $0"
}

# ensure_tools CMD:PACKAGE ... - install the Debian packages of the commands that are missing.
ensure_tools() {
    local pair cmd pkg
    local missing=()
    for pair in "$@"; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        have "$cmd" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    have apt-get || die "missing packages (${missing[*]}) and no apt-get to install them"
    [[ ${EUID} -eq 0 ]] || die "missing packages (${missing[*]}); install them as root"
    log "installing missing packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ensure_cargo - make cargo usable (rustup puts it in ~/.cargo/bin, often not on root's PATH;
# under sudo, HOME is root's, so the invoking user's ~/.cargo/bin is tried too).
ensure_cargo() {
    local home dir
    for home in "${HOME:-/root}" "$(sudo_user_home)"; do
        dir="${home}/.cargo/bin"
        if ! have cargo && [[ -n ${home} && -x ${dir}/cargo ]]; then
            PATH="${dir}:${PATH}"
            export PATH
        fi
    done
    have cargo || die "cargo not found. Install Rust with rustup (https://rustup.rs):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    then open a new shell (or: source \"\$HOME/.cargo/env\") and re-run $0"
}

# ensure_tun - /dev/net/tun must exist for dhtun to create its interface.
ensure_tun() {
    [[ -c /dev/net/tun ]] && return 0
    if have modprobe; then
        modprobe tun 2>/dev/null || true
    fi
    [[ -c /dev/net/tun ]] || die "/dev/net/tun is missing (load the tun kernel module: modprobe tun)"
}

# lab_init - create the work directory and install the cleanup trap.
lab_init() {
    LAB_WORK=$(mktemp -d "/tmp/dhtun-${LAB_TAG}.XXXXXX")
    trap lab_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    DHTUN_BIN=${DHTUN_BIN:-${CARGO_TARGET_DIR:-${LAB_REPO}/target}/release/dhtun}
    [[ -x ${DHTUN_BIN} ]] || die "dhtun binary not found at ${DHTUN_BIN} (run: cargo build --release)"
}

# lab_ns NAME-SUFFIX - the namespace name for a suffix (a or b).
lab_ns() { printf 'dhtun-%s-%s-%s' "${LAB_TAG}" "${LAB_ID}" "$1"; }

# lab_iface SUFFIX - a unique interface name (<= 15 chars), so that logs can be told apart.
lab_iface() { printf 'dt%s%s' "$1" "$((LAB_ID % 1000000))"; }

# lab_ns_pair - create namespaces A and B joined by a veth pair with the underlay addresses.
lab_ns_pair() {
    local a b
    a=$(lab_ns a)
    b=$(lab_ns b)
    ip netns add "$a"
    LAB_NAMESPACES+=("$a")
    ip netns add "$b"
    LAB_NAMESPACES+=("$b")
    ip -n "$a" link set lo up
    ip -n "$b" link set lo up
    ip -n "$a" link add ul0 type veth peer name ul0 netns "$b"
    ip -n "$a" addr add 198.18.0.1/24 dev ul0
    ip -n "$b" addr add 198.18.0.2/24 dev ul0
    ip -n "$a" link set ul0 up
    ip -n "$b" link set ul0 up
}

# lab_keypair NAME - write NAME.key (0600) and NAME.pub into the work directory.
lab_keypair() {
    local key="${LAB_WORK}/$1.key"
    (umask 077 && "${DHTUN_BIN}" genkey >"$key")
    "${DHTUN_BIN}" pubkey <"$key" >"${LAB_WORK}/$1.pub"
}

# lab_pubkey NAME - print the public key made by lab_keypair NAME.
lab_pubkey() { cat "${LAB_WORK}/$1.pub"; }

# toml_list "a,b,c" - print ["a", "b", "c"].
toml_list() {
    local IFS=,
    local item out=""
    for item in $1; do
        out+="${out:+, }\"${item}\""
    done
    printf '[%s]' "$out"
}

# lab_config OUT IFACE KEYNAME ADDRESSES PORT PEER_KEYNAME PEER_ALLOWED PEER_ENDPOINT
#   ADDRESSES and PEER_ALLOWED are comma-separated. Writes a config with the DHT disabled and
#   one statically addressed peer, plus the [interface] lines in LAB_IFACE_EXTRA.
lab_config() {
    local out=$1 iface=$2 key=$3 addrs=$4 port=$5 peer=$6 allowed=$7 endpoint=$8
    cat >"$out" <<EOF
[interface]
name = "${iface}"
private_key_file = "${LAB_WORK}/${key}.key"
address = $(toml_list "$addrs")
listen_port = ${port}
${LAB_IFACE_EXTRA:-}

[dht]
enabled = false

[[peer]]
public_key = "$(lab_pubkey "$peer")"
allowed_ips = $(toml_list "$allowed")
endpoint = "${endpoint}"
EOF
}

# lab_up NS IFACE CONFIG - start `dhtun up CONFIG` in NS and wait until it answers status.
lab_up() {
    local ns=$1 iface=$2 config=$3 pid i
    local logf="${LAB_WORK}/${iface}.log"
    RUST_LOG=${RUST_LOG:-info} ip netns exec "$ns" "${DHTUN_BIN}" up "$config" >"$logf" 2>&1 &
    pid=$!
    LAB_DAEMON_PIDS+=("$pid")
    LAB_DAEMON_IFACES+=("$iface")
    LAB_DAEMON_NSES+=("$ns")
    LAB_DAEMON_LOGS+=("$logf")
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$logf" >&2 || true
            die "dhtun up for ${iface} exited during startup (log above)"
        fi
        if lab_dhtun "$iface" status "$iface" >/dev/null 2>&1; then
            log "${iface} is up in ${ns} (pid ${pid}, log ${logf})"
            return 0
        fi
        sleep 0.2
    done
    cat "$logf" >&2 || true
    die "dhtun up for ${iface} did not answer status within 20 s (log above)"
}

# lab_dhtun IFACE ARGS... - `dhtun ARGS...` in the namespace of IFACE's daemon, where its
# control socket is (each network namespace has its own).
lab_dhtun() {
    local iface=$1 i
    shift
    for ((i = ${#LAB_DAEMON_IFACES[@]} - 1; i >= 0; i--)); do
        if [[ ${LAB_DAEMON_IFACES[i]} == "${iface}" ]]; then
            ip netns exec "${LAB_DAEMON_NSES[i]}" "${DHTUN_BIN}" "$@"
            return
        fi
    done
    warn "no daemon of ${iface} in this lab"
    return 1
}

# lab_start_pair [EXTRA_ALLOWED_BEHIND_B] - keys, configs and daemons for A and B.
#   Sets IFACE_A, IFACE_B, NS_A, NS_B.
lab_start_pair() {
    local extra_b=${1:-}
    NS_A=$(lab_ns a)
    NS_B=$(lab_ns b)
    IFACE_A=$(lab_iface A)
    IFACE_B=$(lab_iface B)
    lab_keypair a
    lab_keypair b
    lab_config "${LAB_WORK}/a.toml" "${IFACE_A}" a "100.64.0.1/24,fd64::1/64" 51820 \
        b "100.64.0.2/32,fd64::2/128${extra_b:+,${extra_b}}" "198.18.0.2:51820"
    lab_config "${LAB_WORK}/b.toml" "${IFACE_B}" b "100.64.0.2/24,fd64::2/64" 51820 \
        a "100.64.0.1/32,fd64::1/128" "198.18.0.1:51820"
    lab_up "${NS_A}" "${IFACE_A}" "${LAB_WORK}/a.toml"
    lab_up "${NS_B}" "${IFACE_B}" "${LAB_WORK}/b.toml"
}

# lab_ping NS ADDR [TRIES] - one echo per try (1 s wait); the first may go to the handshake.
lab_ping() {
    local ns=$1 addr=$2 tries=${3:-10} i
    for ((i = 1; i <= tries; i++)); do
        if ip netns exec "$ns" ping -n -c 1 -W 1 "$addr" >/dev/null 2>&1; then
            log "ping ${addr} from ${ns}: ok (try ${i})"
            return 0
        fi
    done
    warn "ping ${addr} from ${ns}: no reply after ${tries} tries"
    return 1
}

# lab_show_logs - print the tail of every daemon log.
lab_show_logs() {
    local f
    for f in "${LAB_DAEMON_LOGS[@]}"; do
        printf -- '----- %s -----\n' "$f" >&2
        tail -n 40 "$f" >&2 || true
    done
}

# lab_stop_all - `dhtun down` every daemon; SIGTERM, then SIGKILL, what does not stop.
lab_stop_all() {
    local i pid iface n
    for ((i = ${#LAB_DAEMON_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${LAB_DAEMON_PIDS[i]}
        iface=${LAB_DAEMON_IFACES[i]}
        kill -0 "$pid" 2>/dev/null || continue
        timeout 10 ip netns exec "${LAB_DAEMON_NSES[i]}" "${DHTUN_BIN}" down "$iface" >/dev/null 2>&1 ||
            kill -TERM "$pid" 2>/dev/null || true
        for ((n = 0; n < 50; n++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            warn "daemon ${iface} (pid ${pid}) did not stop; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    LAB_DAEMON_PIDS=()
    LAB_DAEMON_IFACES=()
    LAB_DAEMON_NSES=()
}

# lab_cleanup - stop daemons, delete namespaces (and so the veth pair), remove the work dir.
lab_cleanup() {
    local rc=$? ns pid
    set +e
    lab_stop_all
    for ns in "${LAB_NAMESPACES[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null
        done
        ip netns del "$ns" 2>/dev/null
    done
    LAB_NAMESPACES=()
    if [[ -n ${LAB_WORK} && -d ${LAB_WORK} ]]; then
        if ((rc != 0)); then
            warn "keeping logs and configs in ${LAB_WORK}"
        else
            rm -rf "${LAB_WORK}"
        fi
    fi
    return "$rc"
}

# ---------------------------------------------------------------------------------------------
# wireguard-go peers, for comparison benchmarks (bench.sh --compare).
#
# There is no WireGuard kernel module on the machines this runs on, so wireguard-go is the
# userspace peer to compare against. Its control (UAPI) socket is /var/run/wireguard/IFACE.sock,
# a filesystem path shared by all namespaces, so each lab uses unique interface names, and a
# wireguard-go that is SIGKILLed leaves a stale socket behind: lab_wg_stop_all stops them with
# SIGTERM first (wireguard-go then removes its interface and socket itself). Overlay:
# 100.64.1.1/24 (A) and 100.64.1.2/24 (B) on UDP port 51821 of the same underlay as dhtun.

LAB_WG_PIDS=()
LAB_WG_IFACES=()
LAB_WG_RUN_DIR=/var/run/wireguard

# lab_wg_iface SUFFIX - a unique wireguard-go interface name (<= 15 chars).
lab_wg_iface() { printf 'wg%s%s' "$1" "$((LAB_ID % 1000000))"; }

# lab_wg_keypair NAME - write NAME.wgkey (0600) and NAME.wgpub into the work directory.
lab_wg_keypair() {
    local key="${LAB_WORK}/$1.wgkey"
    (umask 077 && wg genkey >"$key")
    wg pubkey <"$key" >"${LAB_WORK}/$1.wgpub"
}

# lab_wg_up NS IFACE KEYNAME ADDRESS PORT PEER_KEYNAME PEER_ALLOWED PEER_ENDPOINT
#   Start `wireguard-go -f IFACE` in NS, configure it with `wg setconf`, add ADDRESS, set it up.
lab_wg_up() {
    local ns=$1 iface=$2 key=$3 addr=$4 port=$5 peer=$6 allowed=$7 endpoint=$8 pid i
    local logf="${LAB_WORK}/${iface}.log" conf="${LAB_WORK}/${iface}.conf"
    [[ -e ${LAB_WG_RUN_DIR}/${iface}.sock ]] && die "${LAB_WG_RUN_DIR}/${iface}.sock already exists"
    # -f keeps it in the foreground, so $! is wireguard-go itself (its memory is what we sample);
    # WG_PROCESS_FOREGROUND=1 also silences its "use the kernel module instead" banner.
    WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error ip netns exec "$ns" wireguard-go -f "$iface" >"$logf" 2>&1 &
    pid=$!
    LAB_WG_PIDS+=("$pid")
    LAB_WG_IFACES+=("$iface")
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || {
            cat "$logf" >&2 || true
            die "wireguard-go for ${iface} exited during startup (log above)"
        }
        [[ -S ${LAB_WG_RUN_DIR}/${iface}.sock ]] && break
        sleep 0.1
    done
    [[ -S ${LAB_WG_RUN_DIR}/${iface}.sock ]] || die "wireguard-go for ${iface} did not open its socket within 10 s"
    (
        umask 077
        cat >"$conf" <<CONF
[Interface]
PrivateKey = $(cat "${LAB_WORK}/${key}.wgkey")
ListenPort = ${port}

[Peer]
PublicKey = $(cat "${LAB_WORK}/${peer}.wgpub")
AllowedIPs = ${allowed}
Endpoint = ${endpoint}
CONF
    )
    ip netns exec "$ns" wg setconf "$iface" "$conf"
    ip -n "$ns" addr add "$addr" dev "$iface"
    ip -n "$ns" link set "$iface" up
    log "wireguard-go ${iface} is up in ${ns} (pid ${pid}, log ${logf})"
}

# lab_wg_start_pair - wireguard-go peers A and B on the lab's namespaces (lab_ns_pair first).
#   Sets WG_IFACE_A, WG_IFACE_B, WG_PID_A, WG_PID_B.
# shellcheck disable=SC2034 # the WG_PID_* results are for the sourcing script
lab_wg_start_pair() {
    WG_IFACE_A=$(lab_wg_iface A)
    WG_IFACE_B=$(lab_wg_iface B)
    lab_wg_keypair wga
    lab_wg_keypair wgb
    lab_wg_up "$(lab_ns a)" "${WG_IFACE_A}" wga 100.64.1.1/24 51821 wgb 100.64.1.2/32 198.18.0.2:51821
    WG_PID_A=${LAB_WG_PIDS[-1]}
    lab_wg_up "$(lab_ns b)" "${WG_IFACE_B}" wgb 100.64.1.2/24 51821 wga 100.64.1.1/32 198.18.0.1:51821
    WG_PID_B=${LAB_WG_PIDS[-1]}
}

# lab_wg_stop_all - SIGTERM every wireguard-go (SIGKILL after 5 s) and remove stale sockets.
lab_wg_stop_all() {
    local i pid iface n
    for ((i = ${#LAB_WG_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${LAB_WG_PIDS[i]}
        iface=${LAB_WG_IFACES[i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for ((n = 0; n < 50; n++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                warn "wireguard-go ${iface} (pid ${pid}) did not stop; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            wait "$pid" 2>/dev/null || true
        fi
        rm -f "${LAB_WG_RUN_DIR}/${iface}.sock"
    done
    LAB_WG_PIDS=()
    LAB_WG_IFACES=()
}

# lab_cleanup_wg - lab_cleanup that first stops wireguard-go; keeps the script's exit status.
#   Install it in place of lab_cleanup after lab_init: trap lab_cleanup_wg EXIT
lab_cleanup_wg() {
    local rc=$?
    set +e
    lab_wg_stop_all
    # lab_cleanup reads the exit status from $?, so hand it over unchanged.
    (exit "$rc")
    lab_cleanup
}
