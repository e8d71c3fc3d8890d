#!/usr/bin/env bash
# The dhtun namespace lab: a private "internet" with a DHT bootstrap node and N dhtun peers that
# know each other by public key only and find each other through that DHT.
#
#   sudo bash netns-scripts/lab.sh up N        build the lab and start everything (N = 1..200)
#   sudo bash netns-scripts/lab.sh down        remove everything the lab created (idempotent)
#   sudo bash netns-scripts/lab.sh exec PEER CMD [ARG...]
#                                              run CMD in peer PEER's namespace (1..N, or hub)
#   sudo bash netns-scripts/lab.sh status      `dhtun status` of every peer
#   sudo bash netns-scripts/lab.sh logs [PEER] the last lines of the daemons' logs (or all of one)
#   sudo bash netns-scripts/lab.sh info        names, addresses and keys of the running lab
#
# Topology (everything stays inside the lab's namespaces):
#
#   hub namespace  dhtun-LAB-hub: bridge br0 = 198.18.0.254/24 (the "internet"), running
#                  `dhtun dht-node --listen 198.18.0.254:6881`
#   peer i         dhtun-LAB-p<i>: veth ul0 = 198.18.0.<i>/24, its other end (p<i>) on br0;
#                  a second interface lan0 = 100.65.<i>.1/24 (the subnet behind the peer; a veth
#                  pair inside the namespace, as this kernel may have no dummy driver);
#                  dhtun interface dh<LAB>p<i>: 100.64.0.<i>/24 and fd64::<i>/64, UDP port 51820,
#                  [dht] bootstrap = the hub node, server_mode = true. Every other peer j is listed
#                  by public key only (no endpoint), allowed_ips = 100.64.0.<j>/32, fd64::<j>/128,
#                  100.65.<j>.0/24.
#
# LAB is the lab's name, `lab` unless DHTUN_LAB is set (1-8 of [a-z0-9]); two labs with different
# names can run at once. The lab's state (keys, configs, logs, pids) lives in /run/dhtun-LAB, so
# later commands find it. Namespace names (dhtun-LAB-hub, dhtun-LAB-p<i>) never match the
# dhtun-TAG-PID-X names of the test suite, and interface names (dh<LAB>p<i>) never match its
# d<TAG><PID><X> names, so a lab and a test run can coexist.
#
# Environment: DHTUN_BIN (default: target/release/dhtun of this repository, built when missing),
# DHTUN_LAB (see above), RUST_LOG (daemon log level, default info).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns-scripts/lib.sh
source "${here}/lib.sh"

LAB_NAME=${DHTUN_LAB:-lab}
[[ ${LAB_NAME} =~ ^[a-z0-9]{1,8}$ ]] || die "DHTUN_LAB must be 1-8 characters of [a-z0-9], not '${LAB_NAME}'"
STATE=/run/dhtun-${LAB_NAME}
HUB_NS=dhtun-${LAB_NAME}-hub
HUB_ADDR=198.18.0.254
DHT_PORT=6881
TUN_PORT=51820
MAX_PEERS=200

usage() {
    cat <<EOF
usage: lab.sh up N | down | exec PEER CMD [ARG...] | status | logs [PEER] | info

  up N          build a lab of a DHT bootstrap node and N dhtun peers (1..${MAX_PEERS}) in network
                namespaces; peers know each other by public key only and meet through the DHT
  down          stop every daemon and delete every namespace and file of the lab (idempotent)
  exec PEER CMD run CMD inside the namespace of peer PEER (1..N) or of the hub (PEER = hub)
  status        print \`dhtun status\` of every peer
  logs [PEER]   the last 20 log lines of every daemon, or the whole log of PEER (1..N or hub)
  info          namespaces, interfaces, addresses and public keys of the running lab

Peer i: underlay 198.18.0.i/24 (namespace dhtun-${LAB_NAME}-pi), overlay 100.64.0.i/24 and
fd64::i/64 (interface dh${LAB_NAME}pi), subnet 100.65.i.0/24 (100.65.i.1 on lan0). Hub: bridge
${HUB_ADDR}/24 running \`dhtun dht-node --listen ${HUB_ADDR}:${DHT_PORT}\` (namespace ${HUB_NS}).
State in ${STATE}. Environment: DHTUN_BIN, DHTUN_LAB (lab name, default lab), RUST_LOG.

examples:
  sudo bash netns-scripts/lab.sh up 3
  sudo bash netns-scripts/lab.sh exec 1 ping -c1 100.64.0.3
  sudo bash netns-scripts/lab.sh exec 2 ping -c1 100.65.3.1
  sudo bash netns-scripts/lab.sh status
  sudo bash netns-scripts/lab.sh down
EOF
}

peer_ns() { printf 'dhtun-%s-p%s' "${LAB_NAME}" "$1"; }
peer_iface() { printf 'dh%sp%s' "${LAB_NAME}" "$1"; }

# lab_peers - the number of peers of the running lab (fails when there is none).
lab_peers() {
    [[ -r ${STATE}/peers ]] || die "no lab '${LAB_NAME}' is up (no ${STATE}/peers); start one with: lab.sh up N"
    cat "${STATE}/peers"
}

# resolve_bin - set DHTUN_BIN, building the release binary when it is missing.
resolve_bin() {
    if [[ -n ${DHTUN_BIN:-} ]]; then
        [[ -x ${DHTUN_BIN} ]] || die "DHTUN_BIN=${DHTUN_BIN} is not an executable file"
        return 0
    fi
    DHTUN_BIN=${CARGO_TARGET_DIR:-${LAB_REPO}/target}/release/dhtun
    if [[ ! -x ${DHTUN_BIN} ]]; then
        ensure_tools cc:build-essential make:build-essential pkg-config:pkg-config
        ensure_cargo
        log "building dhtun (cargo build --release)"
        (cd "${LAB_REPO}" && cargo build --release)
    fi
    [[ -x ${DHTUN_BIN} ]] || die "dhtun binary not found at ${DHTUN_BIN} after building"
}

# state_bin - the binary the running lab was started with.
state_bin() {
    if [[ -r ${STATE}/bin ]]; then
        DHTUN_BIN=$(cat "${STATE}/bin")
    else
        resolve_bin
    fi
}

# ns_of PEER - the namespace of PEER (a number or hub) in the running lab.
ns_of() {
    local peer=$1 n
    if [[ ${peer} == hub ]]; then
        printf '%s' "${HUB_NS}"
        return 0
    fi
    n=$(lab_peers)
    if ! [[ ${peer} =~ ^[0-9]+$ ]] || ((10#${peer} < 1 || 10#${peer} > n)); then
        die "no peer '${peer}' in lab '${LAB_NAME}': PEER is 1..${n} or hub"
    fi
    peer_ns "$((10#${peer}))"
}

# spawn_detached PIDFILE LOG CMD... - start CMD in its own session (so a Ctrl-C or the end of this
# script does not reach it) with output to LOG, and write its pid. `setsid` (not the leader of
# this script's process group) and `ip netns exec` both exec in place: the pid is CMD's own.
spawn_detached() {
    local pidfile=$1 logf=$2
    shift 2
    setsid "$@" </dev/null >"${logf}" 2>&1 &
    printf '%s\n' "$!" >"${pidfile}"
}

# is_ours PID - whether PID is still a process the lab started: a `dhtun up` of a config in our
# state directory, or a `dhtun dht-node` in our hub namespace. Guards against a recycled pid.
is_ours() {
    local pid=$1 cmdline
    [[ ${pid} =~ ^[0-9]+$ ]] || return 1
    cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/${pid}/cmdline") || return 1
    [[ ${cmdline} == *dhtun* ]] || return 1
    [[ ${cmdline} == *" up ${STATE}/"* ]] && return 0
    [[ ${cmdline} == *" dht-node "* && $(ip netns identify "${pid}" 2>/dev/null) == "${HUB_NS}" ]]
}

# stop_pid PIDFILE WHAT [PEER] - stop the process of PIDFILE: `dhtun down` of peer PEER's
# interface first when given, then SIGTERM, then SIGKILL after 5 s.
stop_pid() {
    local pidfile=$1 what=$2 peer=${3:-} pid n
    [[ -r ${pidfile} ]] || return 0
    pid=$(cat "${pidfile}")
    if is_ours "${pid}"; then
        if [[ -n ${peer} ]]; then
            peer_dhtun "${peer}" 10 down "$(peer_iface "${peer}")" >/dev/null 2>&1 || true
        fi
        is_ours "${pid}" && kill -TERM "${pid}" 2>/dev/null
        for ((n = 0; n < 50; n++)); do
            is_ours "${pid}" || break
            sleep 0.1
        done
        if is_ours "${pid}"; then
            warn "${what} (pid ${pid}) did not stop within 5 s; killing it"
            kill -KILL "${pid}" 2>/dev/null || true
        fi
    fi
    rm -f "${pidfile}"
}

# peer_dhtun PEER SECONDS ARGS... - `dhtun ARGS...` in peer PEER's namespace, where the control
# socket of its daemon is, for at most SECONDS.
peer_dhtun() {
    local peer=$1 secs=$2
    shift 2
    timeout "${secs}" ip netns exec "$(peer_ns "${peer}")" "${DHTUN_BIN}" "$@"
}

# socket_answers PEER - whether peer PEER's daemon answers on its control socket.
socket_answers() { peer_dhtun "$1" 5 status "$(peer_iface "$1")" >/dev/null 2>&1; }

cmd_down() {
    local i n ns pid
    set +e
    state_bin
    n=0
    [[ -r ${STATE}/peers ]] && n=$(cat "${STATE}/peers")
    # Daemons: those the state knows, then any pid file left by an `up` that crashed midway.
    for ((i = n; i >= 1; i--)); do
        stop_pid "${STATE}/p${i}.pid" "dhtun daemon of peer ${i}" "$i"
    done
    if [[ -d ${STATE} ]]; then
        for pidf in "${STATE}"/p*.pid; do
            [[ -e ${pidf} ]] || continue
            i=${pidf##*/p}
            i=${i%.pid}
            stop_pid "${pidf}" "dhtun daemon of peer ${i}" "$i"
        done
    fi
    # Daemons of ours that the pid files do not know (started again by hand): their interface
    # names are this lab's own, so ask each one that still answers to go down.
    for ((i = 1; i <= n; i++)); do
        socket_answers "$i" && peer_dhtun "$i" 10 down "$(peer_iface "$i")" >/dev/null 2>&1
    done
    stop_pid "${STATE}/hub.pid" "dht-node"
    # Namespaces: every one named like ours, whether or not the state lists it. Whatever still
    # runs inside is ours (the namespaces are the lab's own) and is killed first.
    while read -r ns _; do
        [[ ${ns} == "${HUB_NS}" || ${ns} =~ ^dhtun-${LAB_NAME}-p[0-9]+$ ]] || continue
        for pid in $(ip netns pids "${ns}" 2>/dev/null); do
            kill -KILL "${pid}" 2>/dev/null
        done
        ip netns del "${ns}" 2>/dev/null || warn "could not delete namespace ${ns}"
    done < <(ip netns list 2>/dev/null)
    rm -rf "${STATE}"
    log "lab '${LAB_NAME}' is down"
    return 0
}

# wait_for WHAT SECONDS CMD... - retry CMD every 20 ms until it succeeds, for at most SECONDS.
wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for ((i = 0; i < secs * 50; i++)); do
        "$@" && return 0
        sleep 0.02
    done
    die "${what}: not after ${secs} s"
}

hub_listening() {
    alive "${STATE}/hub.pid" || {
        tail -n 20 "${STATE}/hub.log" >&2
        die "dhtun dht-node exited during start-up (log above: ${STATE}/hub.log)"
    }
    [[ -n $(ip netns exec "${HUB_NS}" ss -Hunl "sport = :${DHT_PORT}" 2>/dev/null) ]]
}

alive() { kill -0 "$(cat "$1")" 2>/dev/null; }

# peer_ready I - the daemon of peer I answers status and its interface carries its address.
peer_ready() {
    local i=$1
    alive "${STATE}/p${i}.pid" || {
        tail -n 20 "${STATE}/p${i}.log" >&2
        die "dhtun up of peer ${i} exited during start-up (log above: ${STATE}/p${i}.log)"
    }
    socket_answers "$i" &&
        ip -n "$(peer_ns "$i")" -o addr show dev "$(peer_iface "$i")" 2>/dev/null | grep -q "inet 100.64.0.${i}/"
}

write_config() {
    local i=$1 n=$2 j
    {
        printf '[interface]\nname = "%s"\n' "$(peer_iface "$i")"
        printf 'private_key_file = "%s/p%s.key"\n' "${STATE}" "$i"
        printf 'address = ["100.64.0.%s/24", "fd64::%s/64"]\n' "$i" "$i"
        printf 'listen_port = %s\n\n' "${TUN_PORT}"
        printf '[dht]\nbootstrap = ["%s:%s"]\nserver_mode = true\n' "${HUB_ADDR}" "${DHT_PORT}"
        for ((j = 1; j <= n; j++)); do
            ((j == i)) && continue
            printf '\n[[peer]]\npublic_key = "%s"\n' "$(cat "${STATE}/p${j}.pub")"
            printf 'allowed_ips = ["100.64.0.%s/32", "fd64::%s/128", "100.65.%s.0/24"]\n' "$j" "$j" "$j"
        done
    } >"${STATE}/p${i}.toml"
}

cmd_up() {
    local n=${1:-} i ns iface
    if ! [[ ${n} =~ ^[0-9]+$ ]] || ((10#${n} < 1 || 10#${n} > MAX_PEERS)); then
        usage >&2
        die "lab.sh up needs the number of peers, 1..${MAX_PEERS}"
    fi
    n=$((10#${n}))
    need_root lab.sh
    ensure_tools ip:iproute2 ping:iputils-ping ss:iproute2 setsid:util-linux timeout:coreutils
    ensure_tun
    resolve_bin
    if [[ -e ${STATE} ]] || ip netns list 2>/dev/null | grep -q "^${HUB_NS}\b"; then
        die "lab '${LAB_NAME}' is already up (or left over: ${STATE}); run: lab.sh down"
    fi
    mkdir -p "${STATE}"
    chmod 700 "${STATE}"
    printf '%s\n' "${DHTUN_BIN}" >"${STATE}/bin"
    # From here on, a failure takes down what was built so far.
    trap 'rc=$?; if ((rc != 0)); then warn "lab.sh up failed; removing the partial lab"; cmd_down; fi' EXIT

    log "building the hub ${HUB_NS}: bridge br0 ${HUB_ADDR}/24"
    ip netns add "${HUB_NS}"
    ip -n "${HUB_NS}" link set lo up
    ip -n "${HUB_NS}" link add br0 type bridge
    ip -n "${HUB_NS}" addr add "${HUB_ADDR}/24" dev br0
    ip -n "${HUB_NS}" link set br0 up

    for ((i = 1; i <= n; i++)); do
        ns=$(peer_ns "$i")
        ip netns add "${ns}"
        ip -n "${ns}" link set lo up
        ip -n "${HUB_NS}" link add "p${i}" type veth peer name ul0 netns "${ns}"
        ip -n "${HUB_NS}" link set "p${i}" master br0
        ip -n "${HUB_NS}" link set "p${i}" up
        ip -n "${ns}" addr add "198.18.0.${i}/24" dev ul0
        ip -n "${ns}" link set ul0 up
        # The subnet behind the peer: lan0 (with its veth partner lan0p) stays in the namespace.
        ip -n "${ns}" link add lan0 type veth peer name lan0p
        ip -n "${ns}" addr add "100.65.${i}.1/24" dev lan0
        ip -n "${ns}" link set lan0p up
        ip -n "${ns}" link set lan0 up
        (umask 077 && "${DHTUN_BIN}" genkey >"${STATE}/p${i}.key")
        "${DHTUN_BIN}" pubkey <"${STATE}/p${i}.key" >"${STATE}/p${i}.pub"
    done
    printf '%s\n' "$n" >"${STATE}/peers"
    for ((i = 1; i <= n; i++)); do
        write_config "$i" "$n"
    done

    log "starting dhtun dht-node on ${HUB_ADDR}:${DHT_PORT}"
    spawn_detached "${STATE}/hub.pid" "${STATE}/hub.log" \
        ip netns exec "${HUB_NS}" env RUST_LOG="${RUST_LOG:-info}" \
        "${DHTUN_BIN}" dht-node --listen "${HUB_ADDR}:${DHT_PORT}"
    wait_for "dht-node listening on ${HUB_ADDR}:${DHT_PORT}" 10 hub_listening

    # All daemons start at once; each up time is kept (unix seconds, for time-to-first-packet).
    for ((i = 1; i <= n; i++)); do
        printf '%s\n' "${EPOCHREALTIME}" >"${STATE}/p${i}.up_at"
        spawn_detached "${STATE}/p${i}.pid" "${STATE}/p${i}.log" \
            ip netns exec "$(peer_ns "$i")" env RUST_LOG="${RUST_LOG:-info}" \
            "${DHTUN_BIN}" up "${STATE}/p${i}.toml"
    done
    for ((i = 1; i <= n; i++)); do
        wait_for "dhtun of peer ${i} ready" 20 peer_ready "$i"
    done
    trap - EXIT
    for ((i = 1; i <= n; i++)); do
        iface=$(peer_iface "$i")
        log "peer ${i}: $(peer_ns "$i"), ${iface} 100.64.0.${i} fd64::${i}, subnet 100.65.${i}.0/24, pid $(cat "${STATE}/p${i}.pid")"
    done
    log "lab '${LAB_NAME}' is up: ${n} peers; try: lab.sh exec 1 ping -c1 100.64.0.${n}"
}

cmd_exec() {
    local peer=${1:-} ns
    [[ -n ${peer} && $# -ge 2 ]] || {
        usage >&2
        die "lab.sh exec needs PEER and a command"
    }
    shift
    ns=$(ns_of "${peer}")
    exec ip netns exec "${ns}" "$@"
}

cmd_status() {
    local n i rc=0
    n=$(lab_peers)
    state_bin
    for ((i = 1; i <= n; i++)); do
        peer_dhtun "$i" 10 status "$(peer_iface "$i")" || {
            warn "peer ${i}: dhtun status failed"
            rc=1
        }
        ((i < n)) && echo
    done
    return "${rc}"
}

cmd_logs() {
    local n i
    n=$(lab_peers)
    if [[ -n ${1:-} ]]; then
        if [[ $1 == hub ]]; then
            cat "${STATE}/hub.log"
        else
            ns_of "$1" >/dev/null
            cat "${STATE}/p$((10#$1)).log"
        fi
        return 0
    fi
    printf -- '----- dht-node (%s/hub.log) -----\n' "${STATE}"
    tail -n 20 "${STATE}/hub.log" || true
    for ((i = 1; i <= n; i++)); do
        printf -- '----- peer %s (%s/p%s.log) -----\n' "$i" "${STATE}" "$i"
        tail -n 20 "${STATE}/p${i}.log" || true
    done
}

cmd_info() {
    local n i
    n=$(lab_peers)
    printf 'lab %s: state %s, binary %s\n' "${LAB_NAME}" "${STATE}" "$(cat "${STATE}/bin")"
    printf 'hub: namespace %s, dht-node %s:%s (pid %s)\n' "${HUB_NS}" "${HUB_ADDR}" "${DHT_PORT}" "$(cat "${STATE}/hub.pid" 2>/dev/null || echo '?')"
    for ((i = 1; i <= n; i++)); do
        printf 'peer %s: namespace %s, interface %s, underlay 198.18.0.%s:%s, overlay 100.64.0.%s fd64::%s, subnet 100.65.%s.0/24, pid %s, key %s\n' \
            "$i" "$(peer_ns "$i")" "$(peer_iface "$i")" "$i" "${TUN_PORT}" "$i" "$i" "$i" \
            "$(cat "${STATE}/p${i}.pid" 2>/dev/null || echo '?')" "$(cat "${STATE}/p${i}.pub")"
    done
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    case ${cmd} in
    up) cmd_up "$@" ;;
    down)
        need_root lab.sh
        cmd_down
        ;;
    exec)
        need_root lab.sh
        cmd_exec "$@"
        ;;
    status)
        need_root lab.sh
        cmd_status
        ;;
    logs)
        need_root lab.sh
        cmd_logs "$@"
        ;;
    info) cmd_info ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        [[ -z ${cmd} ]] && exit 2
        die "unknown command: ${cmd}"
        ;;
    esac
}

main "$@"
