#!/usr/bin/env bash
# Benchmark dhtun between two network namespaces on one machine, against the bare veth pair
# underneath it (the ceiling) and, with --compare, against wireguard-go on the same pair, all in
# one run so that every ratio compares figures measured under the same conditions.
#
#   sudo bash netns-scripts/bench.sh [--quick] [--compare] [--no-build] [--busy-poll US]
#
# dhtun is measured twice: with its defaults, and (column "dhtun+poll") with busy_poll_us set,
# which trades CPU for latency. Both columns are the same two daemons: the script switches the
# setting with `dhtun reload` before each measurement.
#
# Measures, each for a bounded time, from namespace A to namespace B:
#   - TCP throughput with iperf3: 1 stream, 4 streams (-P 4), reverse (-R); median of 3 runs;
#   - ping RTT, idle and while one TCP stream runs: average and p99 of individual replies;
#   - memory: VmRSS and VmHWM of each daemon, sampled every 100 ms from /proc/PID/status while
#     iperf3 offers UDP at 100 Mbit/s, 1 Gbit/s, 2 Gbit/s and without limit (-b 0), and what
#     B received; the flood's delivery is also put against the best lower step (a tunnel that
#     collapses under overload delivers less than it did when offered less) and against TCP.
# Prints one table, writes bench-results/bench-YYYYmmdd-HHMMSS.csv (the table and details) and
# ...-memory.csv (every sample), draws ...-memory.png with gnuplot, and after a full (not --quick)
# run copies that picture to docs/bench-memory.png, which the README shows.
#
# Traffic goes only to the namespaces this script creates: underlay 198.18.0.1/.2, dhtun overlay
# 100.64.0.1/.2, wireguard-go overlay 100.64.1.1/.2. Everything is removed when it exits.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns-scripts/lib.sh
source "${here}/lib.sh"

usage() {
    cat <<EOF
usage: sudo bash netns-scripts/bench.sh [--quick] [--compare] [--no-build] [--busy-poll US]
  --quick         short runs (3 s per test, 1 run each) for a smoke test; does not update docs/
  --compare       also measure wireguard-go (userspace WireGuard) on the same namespaces
  --no-build      use the existing release binary (\$DHTUN_BIN or target/release/dhtun)
  --busy-poll US  busy_poll_us of the "dhtun+poll" column (default 200; 0 leaves the column out)
EOF
}

quick=0
compare=0
build=1
busy_poll=200
while (($#)); do
    case $1 in
    --quick) quick=1 ;;
    --busy-poll)
        # What the config accepts (0..=1000), without leading zeros, which bash reads as octal.
        [[ ${2:-} =~ ^(0|[1-9][0-9]{0,2}|1000)$ ]] ||
            die "--busy-poll needs 0 to 1000 microseconds, e.g. --busy-poll 200"
        busy_poll=$2
        shift
        ;;
    --compare) compare=1 ;;
    --no-build) build=0 ;;
    *) other_option "$1" ;;
    esac
    shift
done

if ((quick)); then
    TCP_SECS=3
    TCP_RUNS=1
    STEP_SECS=3
    PING_COUNT=200
    IDLE_SECS=1
else
    TCP_SECS=10
    TCP_RUNS=3
    STEP_SECS=10
    # p99 of 500 echoes is the 5th worst, which moved by a millisecond between runs; of 1500
    # it is the 15th.
    PING_COUNT=1500
    IDLE_SECS=2
fi
# Inner UDP payload for the ladder: 1392 + 8 (UDP) + 20 (IPv4) fills the tunnels' 1420-byte MTU
# without fragmenting; the raw veth gets the same datagrams so the three columns compare.
UDP_LEN=1392
IPERF_PORT=5201
# The offered loads of the memory ladder: name, iperf3 -b value (0 = as fast as it can), title.
# 2 Gbit/s is above what a userspace tunnel delivers on a small machine, so that step shows what
# it delivers when offered a little too much, and the flood after it how much of that survives.
STEP_NAMES=(100M 1G 2G unlimited)
STEP_RATES=(100M 1G 2G 0)
STEP_TITLES=("100 Mbit/s" "1 Gbit/s" "2 Gbit/s" "unlimited")

need_root bench.sh
tools=(ip:iproute2 ss:iproute2 ping:iputils-ping timeout:coreutils iperf3:iperf3 jq:jq
    gnuplot:gnuplot-nox)
((build)) && tools+=(cc:build-essential pkg-config:pkg-config)
((compare)) && tools+=(wireguard-go:wireguard-go wg:wireguard-tools)
ensure_tools "${tools[@]}"
ensure_tun

# Both peers, iperf3 and the kernel's share of the work compete for the same cores: anything
# else running skews every figure, so say so up front and keep the load in the results.
load_start=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="${load_start}" -v n="$(nproc)" 'BEGIN { exit !(l > 0.25 * n) }'; then
    warn "load average ${load_start} on $(nproc) cores: other work on this machine will skew the figures"
fi

if ((build)); then
    ensure_cargo
    log "building dhtun (cargo build --release)"
    (cd "${LAB_REPO}" && cargo build --release)
fi

BG_PIDS=()
bench_cleanup() {
    local rc=$? pid
    set +e
    # Background helpers (memory sampler, ping load) would end on their own; stop them now instead.
    for pid in "${BG_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    (exit "$rc")
    lab_cleanup_wg
}

LAB_TAG=bench
lab_init
# Replaces lab_init's trap: wireguard-go must be stopped before the namespaces go away.
trap bench_cleanup EXIT

stamp=$(date +%Y%m%d-%H%M%S)
RESULTS_DIR="${LAB_REPO}/bench-results"
mkdir -p "${RESULTS_DIR}"
CSV="${RESULTS_DIR}/bench-${stamp}.csv"
MEM_CSV="${RESULTS_DIR}/bench-${stamp}-memory.csv"
PNG="${RESULTS_DIR}/bench-${stamp}-memory.png"

log "creating namespaces $(lab_ns a) and $(lab_ns b) on 198.18.0.0/24"
lab_ns_pair
lab_start_pair ""
DHTUN_PID_A=${LAB_DAEMON_PIDS[0]}
DHTUN_PID_B=${LAB_DAEMON_PIDS[1]}
TARGETS=(dhtun raw)
declare -A ADDR=([dhtun]=100.64.0.2 [poll]=100.64.0.2 [raw]=198.18.0.2 [wg]=100.64.1.2)
declare -A TITLE=([dhtun]=dhtun [poll]="dhtun+poll" [raw]="raw veth" [wg]=wireguard-go)
# The sender's interface for each target, whose tx_dropped counts what was offered but never
# reached the tunnel daemon (the kernel's TUN queue was full).
declare -A SEND_IFACE=([dhtun]="${IFACE_A}" [poll]="${IFACE_A}" [raw]=ul0)
# The tunnel daemon's UDP port, whose socket drops in B count what was encrypted and sent, then lost.
declare -A TUNNEL_PORT=([dhtun]=51820 [poll]=51820)
# busy_poll_us of the dhtun daemons for each of dhtun's columns.
declare -A WINDOW=([dhtun]=0 [poll]="${busy_poll}")
((busy_poll > 0)) && TARGETS=(dhtun poll raw)
if ((compare)); then
    lab_wg_start_pair
    TARGETS+=(wg)
    SEND_IFACE[wg]=${WG_IFACE_A}
    TUNNEL_PORT[wg]=51821
fi

# The first packets start the handshakes; measure only once both tunnels carry traffic.
lab_ping "${NS_A}" "${ADDR[dhtun]}" || die "dhtun tunnel does not carry ping"
if ((compare)); then
    lab_ping "${NS_A}" "${ADDR[wg]}" || die "wireguard-go tunnel does not carry ping"
fi

# ---------------------------------------------------------------------------------------------
# Results: VAL[metric|target]. Metrics are listed in order; the shown ones make the table.
METRICS=()
declare -A M_LABEL=() M_SHOW=() VAL=()
metric() {
    METRICS+=("$1")
    M_LABEL[$1]=$2
    M_SHOW[$1]=$3
}
put() { VAL["$1|$2"]=$3; }
get() { printf '%s' "${VAL["$1|$2"]:--}"; }

runs_word=$( ((TCP_RUNS == 1)) && echo "1 run" || echo "median of ${TCP_RUNS}")
metric tcp1 "TCP 1 stream, Gbit/s (${runs_word})" 1
metric tcp4 "TCP 4 streams, Gbit/s" 1
metric tcpR "TCP reverse (B to A), Gbit/s" 1
metric cpu_idle_tcp1 "CPU idle during 1 TCP stream, % of all cores" 1
metric ping_idle_avg "ping idle, avg ms" 1
metric ping_idle_p99 "ping idle, p99 ms" 1
metric ping_load_avg "ping under 1 TCP stream, avg ms" 1
metric ping_load_p99 "ping under 1 TCP stream, p99 ms" 1
metric ping_load_loss "ping under 1 TCP stream, loss %" 1
for i in "${!STEP_NAMES[@]}"; do
    metric "udp_${STEP_NAMES[i]}" "UDP delivered, ${STEP_TITLES[i]/unlimited/unlimited (-b 0)} offered, Gbit/s" 1
done
metric udp_flood_vs_best "UDP unlimited, % of the best lower step" 1
metric udp_flood_vs_tcp1 "UDP unlimited, % of TCP 1 stream" 1
metric cpu_daemons_100M "CPU of both daemons at 100 Mbit/s UDP, % of a core" 1
metric mem_idle "RSS idle, MiB (larger of A and B)" 1
for i in "${!STEP_NAMES[@]}"; do
    metric "mem_hwm_${STEP_NAMES[i]}" "peak RSS (VmHWM) after ${STEP_TITLES[i]}, MiB" 1
done
metric mem_growth "peak growth, unlimited minus 100 Mbit/s, MiB" 1
metric mem_rss_after "RSS after the ladder, MiB" 1
# Details: in the CSV only.
for m in tcp1 tcp4 tcpR; do
    metric "${m}_runs" "${M_LABEL[$m]%%,*}, every run (Gbit/s)" 0
done
metric ping_idle_loss "ping idle, loss %" 0
metric ping_load_tcp "TCP stream during the loaded ping, Gbit/s" 0
for s in "${STEP_NAMES[@]}"; do
    metric "udp_${s}_sent" "UDP ${s} step: sent by iperf3 in A, Gbit/s" 0
    metric "udp_${s}_lost" "UDP ${s} step: lost between iperf3 sender and receiver, %" 0
    metric "udp_${s}_tun_drop_A" "UDP ${s} step: dropped by A's kernel at the tunnel interface (tx_dropped)" 0
    metric "udp_${s}_ring_full_A" "UDP ${s} step: dhtun A drops.ring_full" 0
    metric "udp_${s}_ring_full_B" "UDP ${s} step: dhtun B drops.ring_full" 0
    metric "udp_${s}_drops_A" "UDP ${s} step: every dhtun A drop counter that moved" 0
    metric "udp_${s}_drops_B" "UDP ${s} step: every dhtun B drop counter that moved" 0
    metric "udp_${s}_rcvbuf_A" "UDP ${s} step: RcvbufErrors in A's namespace (/proc/net/snmp)" 0
    metric "udp_${s}_rcvbuf_B" "UDP ${s} step: RcvbufErrors in B's namespace (/proc/net/snmp)" 0
    metric "udp_${s}_sockdrop_B" "UDP ${s} step: drops at B's tunnel UDP socket (/proc/net/udp6)" 0
    metric "udp_${s}_encrypted_A" "UDP ${s} step: packets dhtun A encrypted and sent (tx_packets)" 0
    metric "udp_${s}_lost_AB" "UDP ${s} step: gaps in A's counters seen by B (rx_lost_packets; lags ~4000 packets)" 0
    metric "udp_${s}_cpu" "UDP ${s} step: CPU used by each process and left idle, % of one core" 0
done
for d in A B; do
    metric "mem_idle_${d}" "${d}: RSS idle, MiB" 0
    for s in "${STEP_NAMES[@]}"; do
        metric "mem_hwm_${s}_${d}" "${d}: VmHWM after ${s} step, MiB" 0
    done
    metric "mem_rss_after_${d}" "${d}: RSS after the ladder, MiB" 0
done

# ---------------------------------------------------------------------------------------------
# Measuring helpers.

# iperf_server SECS - a one-off iperf3 server in B (a fresh one per test, so a test that went
# wrong cannot leave a busy server behind), bounded in time; waits until it listens.
iperf_server() {
    local i
    timeout "$(($1 + 30))" ip netns exec "${NS_B}" iperf3 -s -1 -p "${IPERF_PORT}" \
        >>"${LAB_WORK}/iperf3-server.log" 2>&1 &
    SERVER_PID=$!
    for ((i = 0; i < 100; i++)); do
        if ip netns exec "${NS_B}" ss -Hltn "sport = :${IPERF_PORT}" | grep -q .; then
            return 0
        fi
        sleep 0.05
    done
    warn "iperf3 server in ${NS_B} did not start listening within 5 s"
    return 1
}

# iperf_test OUT SECS ADDR ARGS... - one iperf3 test from A to ADDR; JSON report in OUT.
iperf_test() {
    local out=$1 secs=$2 addr=$3 ok=0
    shift 3
    if iperf_server "$secs" &&
        timeout "$((secs + 30))" ip netns exec "${NS_A}" iperf3 -c "$addr" -p "${IPERF_PORT}" \
            -t "$secs" --connect-timeout 3000 --json "$@" >"$out" 2>>"${LAB_WORK}/iperf3-client.log"; then
        ok=1
    fi
    # A server whose client never came would otherwise wait for its timeout.
    ((ok)) || kill -TERM "${SERVER_PID}" 2>/dev/null || true
    wait "${SERVER_PID}" 2>/dev/null || true
    if ((!ok)); then
        warn "iperf3 to ${addr} ($*) failed: $(jq -r '.error // empty' "$out" 2>/dev/null)"
    fi
    ((ok))
}

# gbps JSON PATH - a bits_per_second field of an iperf3 report in Gbit/s, or NA.
gbps() {
    local v
    v=$(jq -r "$2 // empty" "$1" 2>/dev/null || true)
    if [[ -n $v ]]; then awk -v v="$v" 'BEGIN { printf "%.3f", v / 1e9 }'; else printf NA; fi
}

# median VALUE... - the middle value, ignoring NA (the lower middle of an even count).
median() {
    printf '%s\n' "$@" | grep -v '^NA$' | sort -g |
        awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "NA" }'
}

# ratio A B - A / B with two decimals, or - when either is missing.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'
}

# percent A B - A as a whole percentage of B, or "-" when either is missing.
percent() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b + 0 > 0) printf "%.0f", 100 * a / b; else printf "-" }'
}

# ping_stats ADDR COUNT - ping from A every 10 ms; prints "avg p99 loss%" over the individual
# replies (p99 by nearest rank), so one slow reply in a hundred shows.
ping_stats() {
    local addr=$1 count=$2 out="${LAB_WORK}/ping-$1.txt"
    timeout "$((count / 100 + 20))" ip netns exec "${NS_A}" \
        ping -n -i 0.01 -W 1 -c "$count" "$addr" >"$out" 2>&1 || true
    grep -o 'time=[0-9.]*' "$out" | cut -d= -f2 | sort -g | awk -v sent="$count" '
        { v[NR] = $1; s += $1 }
        END {
            if (NR == 0) { print "NA NA 100"; exit }
            i = int(0.99 * NR); if (i < 0.99 * NR) i++
            printf "%.3f %.3f %.1f\n", s / NR, v[i], 100 * (sent - NR) / sent
        }'
}

# is_dhtun TARGET - whether TARGET is one of dhtun's columns (the same daemons, set differently).
is_dhtun() { [[ $1 == dhtun || $1 == poll ]]; }

# use_target TARGET - before measuring one of dhtun's columns, give both daemons its
# busy_poll_us by rewriting their configs and reloading them; sessions stay up.
CURRENT_WINDOW="none yet"
use_target() {
    local target=$1 conf iface
    is_dhtun "$target" || return 0
    [[ ${WINDOW[$target]} == "${CURRENT_WINDOW}" ]] && return 0
    for conf in a b; do
        sed -i -e '/^busy_poll_us *=/d' \
            -e "/^listen_port *=/a busy_poll_us = ${WINDOW[$target]}" "${LAB_WORK}/${conf}.toml"
    done
    for iface in "${IFACE_A}" "${IFACE_B}"; do
        lab_dhtun "$iface" reload "$iface" >/dev/null || die "dhtun reload ${iface} (busy_poll_us = ${WINDOW[$target]}) failed"
        # A config the sed did not change would reload fine and measure the wrong setting.
        [[ $(lab_dhtun "$iface" status "$iface" --json | jq -r '.busy_poll.window_us') == "${WINDOW[$target]}" ]] ||
            die "dhtun ${iface} did not take busy_poll_us = ${WINDOW[$target]} on reload"
    done
    CURRENT_WINDOW=${WINDOW[$target]}
}

# udp_rcvbuf_errors NS - datagrams the namespace's kernel dropped because a UDP socket's receive
# buffer was full (a daemon, or iperf3, not reading fast enough).
udp_rcvbuf_errors() {
    # shellcheck disable=SC2016 # an awk program, run inside the namespace
    ip netns exec "$1" awk '$1 == "Udp:" {
        if (!n) { for (i = 2; i <= NF; i++) col[$i] = i; n = 1 } else { print $col["RcvbufErrors"]; exit } }' \
        /proc/net/snmp
}

# socket_drops NS PORT - the receive drops of the UDP sockets bound to PORT in NS (IPv4 and
# dual-stack IPv6 sockets alike); 0 when there is none.
socket_drops() {
    # shellcheck disable=SC2016 # an awk program, run inside the namespace
    ip netns exec "$1" awk -v port="$(printf ':%04X' "$2")" \
        'FNR > 1 && substr($2, length($2) - 4) == port { n += $NF } END { print n + 0 }' \
        /proc/net/udp /proc/net/udp6
}

# tx_dropped NS IFACE - packets the kernel dropped on their way out of IFACE.
tx_dropped() { ip -n "$1" -s -j link show dev "$2" | jq -r '.[0].stats64.tx.dropped'; }

# ring_full IFACE - dhtun's drops.ring_full counter.
# cpu_ticks - "idle total" jiffies of all cores from /proc/stat (idle includes iowait).
cpu_ticks() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t; exit }' /proc/stat; }

ring_full() { lab_dhtun "$1" status "$1" --json | jq -r '.drops.ring_full'; }

# peers_total IFACE FIELD - a per-peer counter of dhtun's status, summed over its peers.
peers_total() {
    local n
    n=$(lab_dhtun "$1" status "$1" --json 2>/dev/null | jq -r ".peers | map(.$2 // 0) | add // 0" 2>/dev/null) || true
    echo "${n:-0}"
}

# drops_save IFACE FILE - keep dhtun's drop counters; drops_moved IFACE FILE - print those that
# grew since, as "reason +n ..." (or "none"). Every reason, including any added after this script.
drops_save() { lab_dhtun "$1" status "$1" --json | jq -c '.drops' >"$2"; }
drops_moved() {
    lab_dhtun "$1" status "$1" --json | jq -r --slurpfile b "$2" '.drops | to_entries
        | map(select(.value > ($b[0][.key] // 0)) | "\(.key) +\(.value - ($b[0][.key] // 0))")
        | if length == 0 then "none" else join(" ") end'
}

# mem_sampler STOPFILE STEPFILE TARGET NAME:PID... - append "target,daemon,step,t_ms,rss,hwm"
# (KiB) to MEM_CSV every 100 ms until STOPFILE exists; bounded to 10 minutes. Reads /proc and
# the step name with builtins only, so sampling costs no fork and disturbs the run little.
mem_sampler() {
    local stop=$1 stepf=$2 target=$3 i t0 now d spec pid rss hwm k v step pause
    shift 3
    t0=${EPOCHREALTIME/./}
    for ((i = 0; i < 6000; i++)); do
        [[ -e $stop ]] && break
        read -r step <"$stepf" || step=unknown
        now=${EPOCHREALTIME/./}
        for spec in "$@"; do
            pid=${spec#*:}
            rss=""
            hwm=""
            if [[ -r /proc/${pid}/status ]]; then
                while read -r k v _; do
                    case $k in
                    VmRSS:) rss=$v ;;
                    VmHWM:) hwm=$v ;;
                    esac
                done <"/proc/${pid}/status" || true
            fi
            printf '%s,%s,%s,%d,%s,%s\n' "$target" "${spec%%:*}" "$step" "$(((now - t0) / 1000))" \
                "$rss" "$hwm" >>"${MEM_CSV}"
        done
        # Sleep to the next 100 ms tick, not for 100 ms, so the period does not drift.
        now=${EPOCHREALTIME/./}
        d=$((t0 + (i + 1) * 100000 - now))
        if ((d > 0)); then
            printf -v pause '0.%06d' "$d"
            sleep "$pause"
        fi
    done
}

# cpu_share OUT SECS NAME:PID... - after 1 s, the CPU each process (and each iperf3) used over
# the next SECS seconds and the machine's idle time, all in % of one core (NA for a process that
# ended), written to OUT as "A 65 B 31 sender 83 receiver 20 idle 1". Shows where a CPU-bound
# step spends the cores.
cpu_share() {
    local out=$1 secs=$2 spec pid t0 t1 i0 i1 line="" names=() pids=() before=()
    shift 2
    sleep 1
    for spec in "$@"; do names+=("${spec%%:*}") && pids+=("${spec#*:}"); done
    pid=$(pgrep -n -f "iperf3 -c .* -p ${IPERF_PORT}") && names+=(sender) && pids+=("$pid")
    pid=$(pgrep -n -f "iperf3 -s -1 -p ${IPERF_PORT}") && names+=(receiver) && pids+=("$pid")
    for pid in "${pids[@]}"; do before+=("$(proc_ticks "$pid")"); done
    read -r i0 t0 <<<"$(cpu_ticks)"
    sleep "$secs"
    read -r i1 t1 <<<"$(cpu_ticks)"
    for i in "${!pids[@]}"; do
        if [[ -r /proc/${pids[i]}/stat ]]; then
            line+="${names[i]} $((($(proc_ticks "${pids[i]}") - before[i]) * 100 / (secs * $(getconf CLK_TCK)))) "
        else
            line+="${names[i]} NA "
        fi
    done
    printf '%sidle %s\n' "$line" "$(((i1 - i0) * 100 * $(nproc) / (t1 - t0)))" >"$out"
}

# proc_ticks PID - user + system clock ticks the process has used (0 once it is gone).
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# set_step NAME - tell the sampler which step its samples belong to (rename: atomic).
set_step() {
    printf '%s\n' "$1" >"${LAB_WORK}/step.tmp"
    mv -f "${LAB_WORK}/step.tmp" "${LAB_WORK}/step"
}

# mem_stat TARGET DAEMON STEP COLUMN(rss|hwm) - the largest value in KiB, or NA.
mem_stat() {
    awk -F, -v t="$1" -v d="$2" -v s="$3" -v c="$4" '
        $1 == t && $2 == d && $3 == s && $5 != "" {
            v = (c == "rss") ? $5 : $6; if (!n || v + 0 > m) m = v + 0; n = 1 }
        END { if (n) print m; else print "NA" }' "${MEM_CSV}"
}

# mib KIB... - the largest of the values, KiB to MiB with two decimals, or NA.
mib() {
    printf '%s\n' "$@" | awk '$1 != "NA" { if (!n || $1 > m) m = $1; n = 1 }
        END { if (n) printf "%.2f", m / 1024; else printf "NA" }'
}

# ---------------------------------------------------------------------------------------------
# The memory ladder.

# memory_ladder TARGET - offer UDP from A to B at each step while both peers' memory is sampled.
memory_ladder() {
    local target=$1 i s json spid="" d cpid
    local stop="${LAB_WORK}/sampler.stop"
    local -a procs=() before=() after=()
    case $target in
    dhtun | poll) procs=("A:${DHTUN_PID_A}" "B:${DHTUN_PID_B}") ;;
    wg) procs=("A:${WG_PID_A}" "B:${WG_PID_B}") ;;
    esac
    use_target "$target"
    if [[ $target == poll ]]; then
        # The same daemons ran dhtun's ladder first: reset their VmHWM (clear_refs 5) so that
        # this column's peaks are its own.
        echo 5 >"/proc/${DHTUN_PID_A}/clear_refs"
        echo 5 >"/proc/${DHTUN_PID_B}/clear_refs"
    fi

    log "memory ladder through ${TITLE[$target]}: ${STEP_NAMES[*]} offered, ${STEP_SECS} s each"
    rm -f "$stop"
    set_step idle
    if ((${#procs[@]})); then
        mem_sampler "$stop" "${LAB_WORK}/step" "$target" "${procs[@]}" &
        spid=$!
        BG_PIDS+=("$spid")
    fi
    sleep "${IDLE_SECS}"
    for i in "${!STEP_NAMES[@]}"; do
        s=${STEP_NAMES[i]}
        json="${LAB_WORK}/udp-${target}-${s}.json"
        read -ra before <<<"$(counters "$target")"
        if is_dhtun "$target"; then
            drops_save "${IFACE_A}" "${LAB_WORK}/drops-A.json"
            drops_save "${IFACE_B}" "${LAB_WORK}/drops-B.json"
        fi
        set_step "$s"
        rm -f "${LAB_WORK}/cpu-${s}"
        cpu_share "${LAB_WORK}/cpu-${s}" "$((STEP_SECS > 3 ? STEP_SECS - 2 : 1))" "${procs[@]}" &
        cpid=$!
        iperf_test "$json" "${STEP_SECS}" "${ADDR[$target]}" -u -b "${STEP_RATES[i]}" -l "${UDP_LEN}" || true
        wait "$cpid" || true
        put "udp_${s}_cpu" "$target" "$(cat "${LAB_WORK}/cpu-${s}" 2>/dev/null || echo NA)"
        if [[ $s == 100M && ${#procs[@]} -gt 0 ]]; then
            put cpu_daemons_100M "$target" "$(awk '{ for (i = 1; i < NF; i += 2) if ($i == "A" || $i == "B") {
                if ($(i + 1) == "NA") { print "NA"; exit } s += $(i + 1) } print s + 0 }' "${LAB_WORK}/cpu-${s}" 2>/dev/null || echo NA)"
        fi
        set_step "after-${s}"
        read -ra after <<<"$(counters "$target")"
        put "udp_${s}" "$target" "$(gbps "$json" .end.sum_received.bits_per_second)"
        put "udp_${s}_sent" "$target" "$(gbps "$json" .end.sum_sent.bits_per_second)"
        put "udp_${s}_lost" "$target" "$(jq -r '.end.sum_received.lost_percent // "NA"' "$json" 2>/dev/null |
            awk '{ if ($1 == "NA") printf "NA"; else printf "%.1f", $1 }' || echo NA)"
        put "udp_${s}_tun_drop_A" "$target" "$((after[0] - before[0]))"
        put "udp_${s}_rcvbuf_A" "$target" "$((after[1] - before[1]))"
        put "udp_${s}_rcvbuf_B" "$target" "$((after[2] - before[2]))"
        if is_dhtun "$target"; then
            put "udp_${s}_ring_full_A" "$target" "$((after[3] - before[3]))"
            put "udp_${s}_ring_full_B" "$target" "$((after[4] - before[4]))"
            put "udp_${s}_drops_A" "$target" "$(drops_moved "${IFACE_A}" "${LAB_WORK}/drops-A.json")"
            put "udp_${s}_drops_B" "$target" "$(drops_moved "${IFACE_B}" "${LAB_WORK}/drops-B.json")"
            put "udp_${s}_encrypted_A" "$target" "$((after[6] - before[6]))"
            put "udp_${s}_lost_AB" "$target" "$((after[7] - before[7]))"
        fi
        if [[ -n ${TUNNEL_PORT[$target]:-} ]]; then
            put "udp_${s}_sockdrop_B" "$target" "$((after[5] - before[5]))"
        fi
        log "  ${s}: sent $(get "udp_${s}_sent" "$target"), delivered $(get "udp_${s}" "$target") Gbit/s"
    done
    set_step after
    sleep "${IDLE_SECS}"
    if [[ -n $spid ]]; then
        touch "$stop"
        wait "$spid" || true
        for d in A B; do
            put "mem_idle_${d}" "$target" "$(mib "$(mem_stat "$target" "$d" idle rss)")"
            for s in "${STEP_NAMES[@]}"; do
                put "mem_hwm_${s}_${d}" "$target" "$(mib "$(mem_stat "$target" "$d" "$s" hwm)" \
                    "$(mem_stat "$target" "$d" "after-${s}" hwm)")"
            done
            put "mem_rss_after_${d}" "$target" "$(mib "$(mem_stat "$target" "$d" after rss)")"
        done
        for m in mem_idle "${STEP_NAMES[@]/#/mem_hwm_}" mem_rss_after; do
            put "$m" "$target" "$(printf '%s\n' "$(get "${m}_A" "$target")" "$(get "${m}_B" "$target")" |
                awk '$1 != "NA" { if (!n || $1 > m) m = $1; n = 1 } END { if (n) printf "%.2f", m; else printf "NA" }')"
        done
        put mem_growth "$target" "$(awk -v a="$(get mem_hwm_unlimited "$target")" \
            -v b="$(get mem_hwm_100M "$target")" 'BEGIN { printf "%.2f", a - b }')"
        log "  memory: idle $(get mem_idle "$target") MiB, peak $(get mem_hwm_unlimited "$target") MiB"
    fi
}

# counters TARGET - print the drop counters, space separated: the sender interface's tx_dropped,
# RcvbufErrors in A and in B, for dhtun drops.ring_full of A and of B (else 0 0), the drops
# at B's tunnel socket (0 for raw), and for dhtun the packets A sent to its peers and the
# packets B's peers sent that never arrived (else 0 0).
counters() {
    local target=$1 ra=0 rb=0 sd=0 sent=0 lost=0
    if is_dhtun "$target"; then
        ra=$(ring_full "${IFACE_A}")
        rb=$(ring_full "${IFACE_B}")
        sent=$(peers_total "${IFACE_A}" tx_packets)
        lost=$(peers_total "${IFACE_B}" rx_lost_packets)
    fi
    [[ -n ${TUNNEL_PORT[$target]:-} ]] && sd=$(socket_drops "${NS_B}" "${TUNNEL_PORT[$target]}")
    printf '%s %s %s %s %s %s %s %s\n' "$(tx_dropped "${NS_A}" "${SEND_IFACE[$target]}")" \
        "$(udp_rcvbuf_errors "${NS_A}")" "$(udp_rcvbuf_errors "${NS_B}")" "$ra" "$rb" "$sd" \
        "$sent" "$lost"
}

# ---------------------------------------------------------------------------------------------
# Run everything. The memory ladders come first so that each daemon's idle and peak figures are
# its own, not left over from the TCP tests; TCP runs interleave the targets so that any drift
# of the machine during the run touches all of them alike.
echo "target,daemon,step,t_ms,vmrss_kib,vmhwm_kib" >"${MEM_CSV}"
for t in "${TARGETS[@]}"; do
    memory_ladder "$t"
done

declare -A RUNS=() IDLE=()
for ((run = 1; run <= TCP_RUNS; run++)); do
    for t in "${TARGETS[@]}"; do
        for mode in tcp1 tcp4 tcpR; do
            case $mode in
            tcp1) args=() ;;
            tcp4) args=(-P 4) ;;
            tcpR) args=(-R) ;;
            esac
            json="${LAB_WORK}/${mode}-${t}-${run}.json"
            use_target "$t"
            read -r idle0 total0 <<<"$(cpu_ticks)"
            iperf_test "$json" "${TCP_SECS}" "${ADDR[$t]}" "${args[@]}" || true
            read -r idle1 total1 <<<"$(cpu_ticks)"
            # Whether a second worker thread could help: it needs an idle core to run on.
            if [[ $mode == tcp1 ]]; then
                IDLE["$t"]+="${IDLE["$t"]:+ }$(awk -v i=$((idle1 - idle0)) -v t=$((total1 - total0)) \
                    'BEGIN { if (t > 0) printf "%.0f", 100 * i / t; else printf "NA" }')"
            fi
            v=$(gbps "$json" .end.sum_received.bits_per_second)
            RUNS["$mode|$t"]+="${RUNS["$mode|$t"]:+ }$v"
            log "TCP ${mode} through ${TITLE[$t]}, run ${run}/${TCP_RUNS}: ${v} Gbit/s"
        done
    done
done
for t in "${TARGETS[@]}"; do
    for mode in tcp1 tcp4 tcpR; do
        read -ra runs <<<"${RUNS["$mode|$t"]}"
        put "$mode" "$t" "$(median "${runs[@]}" | awk '{ if ($1 == "NA") printf "NA"; else printf "%.2f", $1 }')"
        put "${mode}_runs" "$t" "${runs[*]}"
    done
    read -ra idles <<<"${IDLE["$t"]}"
    put cpu_idle_tcp1 "$t" "$(median "${idles[@]}" | awk '{ if ($1 == "NA") printf "NA"; else printf "%.0f", $1 }')"
    best=$(for s in "${STEP_NAMES[@]}"; do [[ $s == unlimited ]] || get "udp_${s}" "$t"; echo; done |
        awk '$1 ~ /^[0-9.]+$/ && $1 > m { m = $1 } END { print m + 0 }')
    put udp_flood_vs_best "$t" "$(percent "$(get udp_unlimited "$t")" "$best")"
    put udp_flood_vs_tcp1 "$t" "$(percent "$(get udp_unlimited "$t")" "$(get tcp1 "$t")")"
done

for t in "${TARGETS[@]}"; do
    use_target "$t"
    log "ping through ${TITLE[$t]}: ${PING_COUNT} echoes every 10 ms, idle"
    read -r avg p99 loss <<<"$(ping_stats "${ADDR[$t]}" "${PING_COUNT}")"
    put ping_idle_avg "$t" "$avg"
    put ping_idle_p99 "$t" "$p99"
    put ping_idle_loss "$t" "$loss"

    log "ping through ${TITLE[$t]} while one TCP stream runs"
    load_secs=$((PING_COUNT / 100 + 3))
    iperf_test "${LAB_WORK}/pingload-${t}.json" "${load_secs}" "${ADDR[$t]}" &
    load_pid=$!
    BG_PIDS+=("${load_pid}")
    # Let the stream fill the path before the first echo goes out.
    sleep 1
    read -r avg p99 loss <<<"$(ping_stats "${ADDR[$t]}" "${PING_COUNT}")"
    wait "${load_pid}" || true
    put ping_load_avg "$t" "$avg"
    put ping_load_p99 "$t" "$p99"
    put ping_load_loss "$t" "$loss"
    put ping_load_tcp "$t" "$(gbps "${LAB_WORK}/pingload-${t}.json" .end.sum_received.bits_per_second)"
done

# A daemon that died during the run makes every later figure of its column meaningless.
failed=0
for pid in "${DHTUN_PID_A}" "${DHTUN_PID_B}" ${WG_PID_A:+"${WG_PID_A}"} ${WG_PID_B:+"${WG_PID_B}"}; do
    if ! kill -0 "$pid" 2>/dev/null; then
        warn "tunnel daemon pid ${pid} died during the benchmark"
        failed=1
    fi
done

# ---------------------------------------------------------------------------------------------
# Report: the table, the CSV, the picture.
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
rev=$(git -C "${LAB_REPO}" describe --always --dirty 2>/dev/null || echo unknown)
machine="$(nproc) cores (${cpu:-unknown CPU}), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
versions="dhtun ${rev}, $(iperf3 --version | head -n 1 | awk '{ print $1, $2 }')"
((compare)) && versions+=", wireguard-go $(wireguard-go --version | awk 'NR == 1 { print $2 }')"
load_end=$(cut -d' ' -f1 /proc/loadavg)
mode_desc=$( ((quick)) && echo "--quick: ${TCP_SECS} s per TCP test, ${STEP_SECS} s per UDP step" ||
    echo "${TCP_SECS} s per TCP test, ${STEP_SECS} s per UDP step")

{
    printf '# dhtun bench %s; %s\n' "${stamp}" "${mode_desc}"
    printf '# machine: %s\n' "${machine}"
    printf '# versions: %s\n' "${versions}"
    printf '# load average (1 min) before the build: %s, at the end: %s\n' "${load_start}" "${load_end}"
    printf '# dhtun_busy_poll: the same daemons with busy_poll_us = %s (empty with --busy-poll 0)\n' "${busy_poll}"
    printf 'metric,label,dhtun,dhtun_busy_poll,raw,wireguard_go,ratio_dhtun_over_wireguard_go\n'
    for m in "${METRICS[@]}"; do
        printf '%s,"%s",%s,%s,%s,%s,%s\n' "$m" "${M_LABEL[$m]}" "$(get "$m" dhtun)" "$(get "$m" poll)" \
            "$(get "$m" raw)" "$(get "$m" wg)" "$(ratio "$(get "$m" dhtun)" "$(get "$m" wg)")"
    done
} >"${CSV}"

printf '\n dhtun benchmark, %s (%s)\n %s\n %s\n load average %s before, %s after\n\n' "${stamp}" \
    "${mode_desc}" "${machine}" "${versions}" "${load_start}" "${load_end}"
printf ' %-52s %9s %11s %9s %13s %9s\n' "" dhtun "dhtun+poll" "raw veth" wireguard-go "dhtun/wg"
for m in "${METRICS[@]}"; do
    ((M_SHOW[$m])) || continue
    printf ' %-52s %9s %11s %9s %13s %9s\n' "${M_LABEL[$m]}" "$(get "$m" dhtun)" "$(get "$m" poll)" \
        "$(get "$m" raw)" "$(get "$m" wg)" "$(ratio "$(get "$m" dhtun)" "$(get "$m" wg)")"
done
if ((busy_poll > 0)); then
    printf '\n dhtun+poll: the same daemons with busy_poll_us = %s (set by dhtun reload). Its idle RSS\n' "${busy_poll}"
    printf ' is measured after the dhtun ladder, its peaks after a VmHWM reset (clear_refs).\n'
fi
printf '\n Where the unlimited UDP flood was dropped (packets):\n'
for t in "${TARGETS[@]}"; do
    line="   ${TITLE[$t]}: lost $(get udp_unlimited_lost "$t")% end to end;"
    line+=" A's ${SEND_IFACE[$t]} tx_dropped $(get udp_unlimited_tun_drop_A "$t");"
    is_dhtun "$t" && line+=" dhtun drops A: $(get udp_unlimited_drops_A "$t"), B: $(get udp_unlimited_drops_B "$t");"
    is_dhtun "$t" && line+=" encrypted by A $(get udp_unlimited_encrypted_A "$t"), of which B saw never arrive $(get udp_unlimited_lost_AB "$t");"
    line+=" RcvbufErrors A $(get udp_unlimited_rcvbuf_A "$t"), B $(get udp_unlimited_rcvbuf_B "$t")"
    [[ $t == raw ]] || line+=" (at B's tunnel socket $(get udp_unlimited_sockdrop_B "$t"))"
    printf '%s\n' "$line"
done

# One series per daemon (time in s, RSS in MiB), blank-line separated for gnuplot's `index`.
plot_targets=(dhtun)
((compare)) && plot_targets+=(wg)
dat="${LAB_WORK}/memory.dat"
: >"$dat"
series=()
for t in "${plot_targets[@]}"; do
    for d in A B; do
        awk -F, -v t="$t" -v d="$d" '$1 == t && $2 == d && $5 != "" { printf "%.1f %.3f\n", $4 / 1000, $5 / 1024 }' \
            "${MEM_CSV}" >>"$dat"
        printf '\n\n' >>"$dat"
        series+=("${TITLE[$t]} ${d} ($([[ $d == A ]] && echo sender || echo receiver))")
    done
done
# Shade each step where dhtun's run had it, and label it with what each target delivered.
gp="${LAB_WORK}/memory.gp"
{
    printf 'set terminal pngcairo size 1200,%d font "sans,10"\n' "$( ((compare)) && echo 800 || echo 500)"
    printf 'set output "%s"\n' "${PNG}"
    printf 'set grid\nset key below horizontal\nset xlabel "time (s)"\nset ylabel "VmRSS (MiB)"\n'
    # Head room above the curves for the step labels.
    printf 'set yrange [0:*]\nset autoscale xfix\nset offsets 0, 0, graph 0.45, 0\n'
    n=1
    for i in "${!STEP_NAMES[@]}"; do
        s=${STEP_NAMES[i]}
        read -r x0 x1 <<<"$(awk -F, -v s="$s" '$1 == "dhtun" && $3 == s {
            if (!n) { a = $4; n = 1 } b = $4 } END { printf "%.1f %.1f", a / 1000, b / 1000 }' "${MEM_CSV}")"
        label="${STEP_TITLES[i]} offered\\n"
        for t in "${TARGETS[@]}"; do
            label+="${TITLE[$t]} $(get "udp_${s}" "$t")\\n"
        done
        label+="Gbit/s delivered"
        printf 'set object %d rect from %s, graph 0 to %s, graph 1 fc rgb "#%s" fs solid 0.5 noborder behind\n' \
            "$n" "$x0" "$x1" "$( ((n % 2)) && echo e8eef8 || echo f4f4f4)"
        printf 'set label %d "%s" at %s, graph 0.97 center front font "sans,9"\n' \
            "$n" "$label" "$(awk -v a="$x0" -v b="$x1" 'BEGIN { print (a + b) / 2 }')"
        n=$((n + 1))
    done
    if ((compare)); then
        printf 'set multiplot layout 2,1\n'
        printf 'set title "Memory of each daemon while A offers UDP to B (sampled every 100 ms)"\n'
        printf 'plot'
        for i in "${!series[@]}"; do
            printf '%s "%s" index %d using 1:2 with lines lw 2 title "%s"' \
                "$( ((i)) && echo ,)" "$dat" "$i" "${series[i]}"
        done
        printf '\nunset label\n'
        printf 'set title "dhtun alone, on its own scale"\n'
        printf 'set yrange [0:*]\nplot "%s" index 0 using 1:2 with lines lw 2 title "%s", "%s" index 1 using 1:2 with lines lw 2 title "%s"\n' \
            "$dat" "${series[0]}" "$dat" "${series[1]}"
        printf 'unset multiplot\n'
    else
        printf 'set title "Memory of each dhtun daemon while A offers UDP to B (sampled every 100 ms)"\n'
        printf 'plot "%s" index 0 using 1:2 with lines lw 2 title "%s", "%s" index 1 using 1:2 with lines lw 2 title "%s"\n' \
            "$dat" "${series[0]}" "$dat" "${series[1]}"
    fi
} >"$gp"
gnuplot "$gp"

if ((!quick)); then
    mkdir -p "${LAB_REPO}/docs"
    cp "${PNG}" "${LAB_REPO}/docs/bench-memory.png"
fi
# Under sudo, leave the results to the user who asked for them.
if [[ -n ${SUDO_UID:-} && -n ${SUDO_GID:-} ]]; then
    chown "${SUDO_UID}:${SUDO_GID}" "${RESULTS_DIR}" "${CSV}" "${MEM_CSV}" "${PNG}" || true
    ((quick)) || chown "${SUDO_UID}:${SUDO_GID}" "${LAB_REPO}/docs" "${LAB_REPO}/docs/bench-memory.png" || true
fi

printf '\n results: %s\n memory samples: %s\n memory plot: %s\n' "${CSV}" "${MEM_CSV}" "${PNG}"
((quick)) || printf ' copied to: %s\n' "${LAB_REPO}/docs/bench-memory.png"
((failed == 0)) || die "a tunnel daemon died during the benchmark; its figures are not valid"
