#!/usr/bin/env bash
# Time from `dhtun up` to the first packet across, through NATs (issue 7), in network namespaces.
#
#   sudo bash netns-scripts/nat-bench.sh [--runs N] [--cases LIST] [--csv FILE] [--no-build]
#
# The topology is the one of tests/nat.rs (see tests/nat_support/mod.rs):
#
#   internet (ns hub): bridge br0 198.18.0.254/24, `dhtun dht-node` on 198.18.0.254:6881
#     relay R (ns r)      198.18.0.10, [interface] relay = true, knows A and B by key
#     public peer (ns b)  198.18.0.20 (case rand-public only)
#     router n<N>         wan0 198.18.0.<100+N>, lan0 198.18.<N>.1/24; nftables: masquerade
#                         (port-preserving) or masquerade random, and a home router's filter
#     peer behind n<N>    ul0 198.18.<N>.2/24, default route via the router
#
# A and B know each other by public key only (DHT, no endpoint) and R by its static endpoint.
# Overlay: A 100.64.0.1, B 100.64.0.2, R 100.64.0.10.
#
# Cases (--cases takes a comma-separated subset):
#   pres-pres    A and B each behind a port-preserving NAT
#   rand-public  A behind a port-randomising NAT, B on a public address
#   rand-rand    A and B each behind a port-randomising NAT (no direct path exists: relay)
#   move         as pres-pres; once the path is direct, A moves behind a third port-preserving
#                NAT (new LAN and public address), daemons left running; measures the move
#
# Each run builds the whole topology afresh (fresh keys, empty conntrack tables, an empty DHT),
# starts the DHT node and R, then starts A and B at the same moment and pings B from A every
# 20 ms. The time is from starting A and B to A's first echo reply (for `move`: from the move to
# the first reply after it). The path is B's entry in A's `dhtun status --json` right after that
# reply (for `move`: just before the move and just after the first reply after it, as
# BEFORE>AFTER). Then: the time until A reports a direct path to B (90 s at most; for rand-rand,
# where none exists, the path is read again 12 s later instead), and the path at the end.
# Prints a table (case, median, min, max, paths) and writes every run to a CSV file (default
# bench-results/nat-bench-YYYYmmdd-HHMMSS.csv).
#
# Traffic goes only to the namespaces this script creates. Everything is removed when it exits.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns-scripts/lib.sh
source "${here}/lib.sh"

ALL_CASES=pres-pres,rand-public,rand-rand,move
HUB_ADDR=198.18.0.254
DHT_PORT=6881
RELAY_ADDR=198.18.0.10
PUBLIC_ADDR=198.18.0.20
PORT=51820
# Bounds: the first reply after `up` (or after the move), and the path becoming direct (a
# relayed peer is looked up in the DHT every minute). Where no direct path exists (rand-rand),
# the path is read again SETTLE_SECS after the first reply, past a direct retry (every 10 s).
FIRST_LIMIT_MS=90000
DIRECT_LIMIT_MS=90000
SETTLE_SECS=12

usage() {
    cat <<EOF
usage: sudo bash netns-scripts/nat-bench.sh [--runs N] [--cases LIST] [--csv FILE] [--no-build]
  --runs N      runs per case (default 5)
  --cases LIST  comma-separated subset of ${ALL_CASES} (default: all)
  --csv FILE    where to write every run (default bench-results/nat-bench-DATE.csv)
  --no-build    use the existing release binary (\$DHTUN_BIN or target/release/dhtun)
EOF
}

runs=5
cases=${ALL_CASES}
csv=""
build=1
while (($#)); do
    case $1 in
    --runs)
        runs=${2:?--runs needs a number}
        shift
        ;;
    --cases)
        cases=${2:?--cases needs a list}
        shift
        ;;
    --csv)
        csv=${2:?--csv needs a file name}
        shift
        ;;
    --no-build) build=0 ;;
    *) other_option "$1" ;;
    esac
    shift
done
[[ ${runs} =~ ^[1-9][0-9]?$ ]] || die "--runs must be 1..99, not '${runs}'"
IFS=, read -r -a CASES <<<"${cases}"
for c in "${CASES[@]}"; do
    [[ ,${ALL_CASES}, == *,"$c",* ]] || die "unknown case '$c' (cases: ${ALL_CASES})"
done

need_root nat-bench.sh
tools=(ip:iproute2 ping:iputils-ping nft:nftables jq:jq timeout:coreutils)
((build)) && tools+=(cc:build-essential pkg-config:pkg-config)
ensure_tools "${tools[@]}"
ensure_tun
if ((build)); then
    ensure_cargo
    log "building dhtun (cargo build --release)"
    (cd "${LAB_REPO}" && cargo build --release)
fi

LAB_TAG=nat
lab_init
if [[ -z ${csv} ]]; then
    mkdir -p "${LAB_REPO}/bench-results"
    csv="${LAB_REPO}/bench-results/nat-bench-$(date +%Y%m%d-%H%M%S).csv"
fi

# ----- topology -------------------------------------------------------------------------------

# ns_add SUFFIX - create namespace SUFFIX (registered for cleanup) with lo up; sets NS to its
#   name (not printed: a command substitution would lose the cleanup registration).
ns_add() {
    NS=$(lab_ns "$1")
    ip netns add "${NS}"
    LAB_NAMESPACES+=("${NS}")
    ip -n "${NS}" link set lo up
}

# internet - the hub with its bridge and DHT node.
internet() {
    ns_add hub
    HUB=${NS}
    ip -n "${HUB}" link add br0 type bridge
    ip -n "${HUB}" addr add "${HUB_ADDR}/24" dev br0
    ip -n "${HUB}" link set br0 up
    RUST_LOG=${RUST_LOG:-info} ip netns exec "${HUB}" "${DHTUN_BIN}" dht-node \
        --listen "${HUB_ADDR}:${DHT_PORT}" >"${LAB_WORK}/dht-node.log" 2>&1 &
    DHT_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -n $(ip netns exec "${HUB}" ss -Hunl "sport = :${DHT_PORT}") ]] && return 0
        sleep 0.05
    done
    die "the DHT node did not bind ${HUB_ADDR}:${DHT_PORT} within 5 s"
}

# public SUFFIX ADDR - a namespace on the internet with public address ADDR.
public() {
    ns_add "$1"
    ip -n "${HUB}" link add "p$1" type veth peer name ul0 netns "${NS}"
    ip -n "${HUB}" link set "p$1" master br0 up
    ip -n "${NS}" addr add "$2/24" dev ul0
    ip -n "${NS}" link set ul0 up
}

# router N MODE - router n<N> (MODE: masquerade or "masquerade random").
router() {
    local n=$1 mode=$2 ns
    ns_add "n$n"
    ns=${NS}
    ip -n "${HUB}" link add "w$n" type veth peer name wan0 netns "$ns"
    ip -n "${HUB}" link set "w$n" master br0 up
    ip -n "$ns" addr add "198.18.0.$((100 + n))/24" dev wan0
    ip -n "$ns" link set wan0 up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$ns" nft -f - <<EOF
flush ruleset
table inet home {
    chain input {
        type filter hook input priority filter; policy drop;
        iif lo accept
        ct state established,related accept
        iifname "lan0" accept
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        iifname "lan0" oifname "wan0" accept
        ct state established,related accept
    }
}
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" ${mode}
    }
}
EOF
}

# behind SUFFIX N - put namespace SUFFIX (created when missing) on the LAN of router n<N>.
behind() {
    local suffix=$1 n=$2 ns rns
    ns=$(lab_ns "$suffix")
    if [[ ! -e /run/netns/${ns} ]]; then
        ns_add "$suffix"
    fi
    rns=$(lab_ns "n$n")
    ip -n "$rns" link add lan0 type veth peer name ul0 netns "$ns"
    ip -n "$rns" addr add "198.18.$n.1/24" dev lan0
    ip -n "$rns" link set lan0 up
    ip -n "$ns" addr add "198.18.$n.2/24" dev ul0
    ip -n "$ns" link set ul0 up
    ip -n "$ns" route add default via "198.18.$n.1"
}

# ----- daemons --------------------------------------------------------------------------------

# config NAME HOST RELAY PEER... - write NAME.toml: overlay 100.64.0.HOST, DHT via the hub, each
#   PEER (a key name; its host number follows a colon, e.g. b:2) by key only, and R as relay
#   peer when RELAY is "relay-peer", or [interface] relay = true when it is "relay-server".
config() {
    local name=$1 host=$2 relay=$3 p key phost
    shift 3
    {
        printf '[interface]\nname = "%s"\nprivate_key_file = "%s/%s.key"\n' \
            "$(lab_iface "${name^^}")" "${LAB_WORK}" "$name"
        printf 'address = ["100.64.0.%s/24"]\nlisten_port = %s\n' "$host" "${PORT}"
        [[ ${relay} == relay-server ]] && printf 'relay = true\n'
        printf '\n[dht]\nbootstrap = ["%s:%s"]\nserver_mode = true\n' "${HUB_ADDR}" "${DHT_PORT}"
        for p in "$@"; do
            key=${p%%:*}
            phost=${p#*:}
            printf '\n[[peer]]\npublic_key = "%s"\nallowed_ips = ["100.64.0.%s/32"]\n' \
                "$(lab_pubkey "$key")" "$phost"
        done
        if [[ ${relay} == relay-peer ]]; then
            printf '\n[[peer]]\npublic_key = "%s"\nallowed_ips = ["100.64.0.10/32"]\n' "$(lab_pubkey r)"
            printf 'endpoint = "%s:%s"\nrelay = true\n' "${RELAY_ADDR}" "${PORT}"
        fi
    } >"${LAB_WORK}/${name}.toml"
}

# spawn NAME - start `dhtun up NAME.toml` in namespace NAME without waiting for it.
spawn() {
    local name=$1 iface
    iface=$(lab_iface "${name^^}")
    RUST_LOG=${RUST_LOG:-info} ip netns exec "$(lab_ns "$name")" "${DHTUN_BIN}" up \
        "${LAB_WORK}/${name}.toml" >>"${LAB_WORK}/${name}.log" 2>&1 &
    LAB_DAEMON_PIDS+=("$!")
    LAB_DAEMON_IFACES+=("$iface")
    LAB_DAEMON_NSES+=("$(lab_ns "$name")")
    LAB_DAEMON_LOGS+=("${LAB_WORK}/${name}.log")
}

# wait_status NAME - wait (10 s at most) until the daemon of NAME answers status.
wait_status() {
    local i
    for ((i = 0; i < 200; i++)); do
        lab_dhtun "$(lab_iface "${1^^}")" status "$(lab_iface "${1^^}")" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    lab_show_logs
    die "the daemon of $1 did not answer status within 10 s"
}

# path_of ME PEER - "direct", "relay" or "none": PEER's path in ME's status.
path_of() {
    lab_dhtun "$(lab_iface "${1^^}")" status "$(lab_iface "${1^^}")" --json |
        jq -r --arg k "$(lab_pubkey "$2")" '.peers[] | select(.public_key == $k) | .path // "none"'
}

# wait_direct SINCE_MS - wait until A reports a direct path to B, DIRECT_LIMIT_MS after SINCE_MS
#   at most; prints the milliseconds from SINCE_MS to then.
wait_direct() {
    while (($(now_ms) - $1 < DIRECT_LIMIT_MS)); do
        if [[ $(path_of a b) == direct ]]; then
            printf '%s' "$(($(now_ms) - $1))"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

now_ms() { printf '%s' "$(($(date +%s%N) / 1000000))"; }

# first_reply FROM ADDR SINCE_MS - ping ADDR from FROM every 20 ms until the first reply; prints
#   the milliseconds from SINCE_MS to it. Fails after FIRST_LIMIT_MS.
first_reply() {
    local ns
    ns=$(lab_ns "$1")
    while (($(now_ms) - $3 < FIRST_LIMIT_MS)); do
        if timeout 5 ip netns exec "$ns" ping -n -q -c 1 -i 0.02 -w 2 "$2" >/dev/null 2>&1; then
            printf '%s' "$(($(now_ms) - $3))"
            return 0
        fi
        sleep 0.005
    done
    return 1
}

# teardown - stop every daemon and helper, delete every namespace (the work dir stays).
teardown() {
    local ns pid
    lab_stop_all
    if [[ -n ${DHT_PID:-} ]]; then
        kill -TERM "${DHT_PID}" 2>/dev/null || true
        wait "${DHT_PID}" 2>/dev/null || true
        DHT_PID=""
    fi
    for ns in "${LAB_NAMESPACES[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
    LAB_NAMESPACES=()
    wait 2>/dev/null || true
}

# one_run CASE RUN - build the topology of CASE, measure, tear down; appends a CSV line.
one_run() {
    local case=$1 run=$2 start ms path direct final
    rm -f "${LAB_WORK}"/*.log
    internet
    public r "${RELAY_ADDR}"
    case ${case} in
    pres-pres | move)
        router 1 masquerade
        router 2 masquerade
        behind a 1
        behind b 2
        [[ ${case} == move ]] && router 3 masquerade
        ;;
    rand-public)
        router 1 "masquerade random"
        behind a 1
        public b "${PUBLIC_ADDR}"
        ;;
    rand-rand)
        router 1 "masquerade random"
        router 2 "masquerade random"
        behind a 1
        behind b 2
        ;;
    esac
    lab_keypair a
    lab_keypair b
    lab_keypair r
    config r 10 relay-server a:1 b:2
    config a 1 relay-peer b:2
    config b 2 relay-peer a:1
    spawn r
    wait_status r

    start=$(now_ms)
    spawn a
    spawn b
    if ! ms=$(first_reply a 100.64.0.2 "${start}"); then
        lab_show_logs
        die "${case} run ${run}: no reply from B within ${FIRST_LIMIT_MS} ms of up"
    fi
    path=$(path_of a b)
    if [[ ${case} == move ]]; then
        # Move once the path is direct (DIRECT_LIMIT_MS at most), so the move leaves a direct path.
        wait_direct "${start}" >/dev/null || true
        path=$(path_of a b)
        ip -n "$(lab_ns a)" link del ul0
        start=$(now_ms)
        behind a 3
        if ! ms=$(first_reply a 100.64.0.2 "${start}"); then
            lab_show_logs
            die "move run ${run}: no reply from B within ${FIRST_LIMIT_MS} ms of the move"
        fi
        path="${path}>$(path_of a b)"
    fi
    if [[ ${case} == rand-rand ]]; then
        # No direct path exists: the path must still be the relay after the direct retries.
        sleep "${SETTLE_SECS}"
        direct=-
    else
        direct=$(wait_direct "${start}") || direct=none
    fi
    final=$(path_of a b)
    log "${case} run ${run}: first reply after ${ms} ms, path ${path}; direct after ${direct} ms; then ${final}"
    printf '%s,%s,%s,%s,%s,%s\n' "${case}" "${run}" "${ms}" "${path}" "${direct}" "${final}" >>"${csv}"
    teardown
}

printf 'case,run,first_reply_ms,path_at_first_reply,direct_after_ms,path_at_end\n' >"${csv}"
load_start=$(cut -d' ' -f1 /proc/loadavg)
for c in "${CASES[@]}"; do
    for ((r = 1; r <= runs; r++)); do
        one_run "$c" "$r"
    done
done

# ----- table ----------------------------------------------------------------------------------

# paths CASE COLUMN - e.g. "direct 4/5, relay 1/5" for one column of the CSV.
paths() {
    awk -F, -v c="$1" -v col="$2" 'NR > 1 && $1 == c { n[$col]++; t++ }
        END { s = ""; for (p in n) s = s (s ? ", " : "") p " " n[p] "/" t; print s }' "${csv}"
}

# column CASE N - the numeric values of CSV column N for CASE, sorted.
column() { awk -F, -v c="$1" -v col="$2" 'NR > 1 && $1 == c && $col ~ /^[0-9]+$/ { print $col }' "${csv}" | sort -n; }

# stats CASE N - "median (min-max)" of a column, or "-".
stats() {
    local v n
    mapfile -t v < <(column "$1" "$2")
    n=${#v[@]}
    if ((n == 0)); then
        printf -- '-'
    else
        printf '%s (%s-%s)' "${v[$(((n - 1) / 2))]}" "${v[0]}" "${v[n - 1]}"
    fi
}

printf "\nTime from \`dhtun up\` to the first ping reply across (move: from the move), and to a\n"
printf 'direct path, in ms: median (min-max) of %s runs each.\n' "${runs}"
printf '%s, load average %s at start on %s cores.\n\n' "${DHTUN_BIN}" "${load_start}" "$(nproc)"
printf '| case | first reply | path at first reply | direct path after | path at the end |\n'
printf '|---|---|---|---|---|\n'
for c in "${CASES[@]}"; do
    if [[ $c == rand-rand ]]; then
        direct="- (none exists)"
    else
        direct="$(stats "$c" 5) in $(column "$c" 5 | wc -l)/${runs} runs"
    fi
    printf '| %s | %s | %s | %s | %s |\n' "$c" "$(stats "$c" 3)" "$(paths "$c" 4)" "${direct}" \
        "$(paths "$c" 6)"
done
printf '\nEvery run: %s\n' "${csv}"
