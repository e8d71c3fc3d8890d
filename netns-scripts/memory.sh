#!/usr/bin/env bash
# Resident memory of the dhtun daemon for a few ring and batch settings, between two network
# namespaces: for each profile, bring up a fresh pair, read VmRSS once the tunnel carries a ping
# (idle), flood both ways with UDP (iperf3 -u -b 0 --bidir) for a few seconds, so that both rings
# of each daemon fill and wrap, and read VmRSS and VmHWM of both daemons again. Prints one
# Markdown table, the one docs/performance.md shows under "Memory".
#
#   sudo bash netns-scripts/memory.sh [--no-build] [--secs N]
#
# Memory is not timing-sensitive: a loaded machine changes how many packets get through, not how
# much the daemon holds, since every ring slot and batch buffer is touched within the first
# thousands of packets. Traffic goes only to the namespaces this script creates (underlay
# 198.18.0.1/.2, overlay 100.64.0.1/.2); everything is removed when it exits.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns-scripts/lib.sh
source "${here}/lib.sh"

usage() { echo "usage: sudo bash netns-scripts/memory.sh [--no-build] [--secs N]"; }

build=1
secs=5
while (($#)); do
    case $1 in
    --no-build) build=0 ;;
    --secs)
        secs=${2:?--secs needs a number}
        shift
        ;;
    *) other_option "$1" ;;
    esac
    shift
done
if [[ ! $secs =~ ^[0-9]+$ ]] || ((secs < 1 || secs > 60)); then
    die "--secs: 1 to 60"
fi

need_root memory.sh
ensure_tools ip:iproute2 ss:iproute2 ping:iputils-ping timeout:coreutils iperf3:iperf3 jq:jq
ensure_tun
if ((build)); then
    ensure_cargo
    log "building dhtun (cargo build --release)"
    (cd "${LAB_REPO}" && cargo build --release)
fi

# name | [interface] lines (newline-separated, in a TOML config) | what they mean, for the table
PROFILES=(
    "default||ring_slots 256, ring_bytes 256 KiB, batch_size 128"
    "small device|ring_slots = 64
ring_bytes = 65536
batch_size = 8|ring_slots 64, ring_bytes 64 KiB, batch_size 8"
    "large|ring_slots = 4096
ring_bytes = 8388608
batch_size = 1024|ring_slots 4096, ring_bytes 8 MiB, batch_size 1024"
)
MTU=1420
PORT=5201

LAB_TAG=mem
lab_init
lab_ns_pair

# vm PID KEY - a /proc/PID/status field in KiB (VmRSS, VmHWM).
vm() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# packet_buffers SLOTS BATCH - what the rings and UDP batches allocate, in KiB: two rings of
# SLOTS slots of ring_slot_bytes(MTU), one 64 KiB receive buffer per 16 datagrams of batch_size.
packet_buffers() {
    local slot=$(((MTU + 132 + 63) / 64 * 64)) recv_buffers=$((($2 + 15) / 16))
    echo $(((2 * $1 * slot + recv_buffers * 65536) / 1024))
}

rows=()
for profile in "${PROFILES[@]}"; do
    IFS='|' read -r -d '' name extra about <<<"${profile}" || true
    about=${about%$'\n'}
    LAB_IFACE_EXTRA=${extra}
    log "profile ${name}: ${about}"
    lab_start_pair ""
    lab_ping "${NS_A}" 100.64.0.2 || die "tunnel does not carry ping (profile ${name})"
    sleep 1
    pids=("${LAB_DAEMON_PIDS[@]}")
    idle_a=$(vm "${pids[0]}" VmRSS)
    idle_b=$(vm "${pids[1]}" VmRSS)
    idle=$((idle_a > idle_b ? idle_a : idle_b))

    timeout "$((secs + 20))" ip netns exec "${NS_B}" iperf3 -s -1 -p "${PORT}" >/dev/null 2>&1 &
    server=$!
    for ((i = 0; i < 100; i++)); do
        ip netns exec "${NS_B}" ss -Hlun "sport = :${PORT}" | grep -q . && break
        ip netns exec "${NS_B}" ss -Hltn "sport = :${PORT}" | grep -q . && break
        sleep 0.05
    done
    gbps=$(timeout "$((secs + 20))" ip netns exec "${NS_A}" iperf3 -c 100.64.0.2 -p "${PORT}" -u \
        -b 0 -l 1392 -t "${secs}" --bidir --json 2>/dev/null |
        jq -r '[.end.sum_received, .end.sum_received_bidir_reverse]
            | map((.bits_per_second // 0) / 1e6 | round / 1000) | join(" / ")' || echo NA)
    wait "${server}" 2>/dev/null || true
    sleep 0.3

    line="| ${name} | ${about} | $(mib "$(packet_buffers \
        "$(grep -oP '^ring_slots = \K[0-9]+' <<<"${extra}" || echo 256)" \
        "$(grep -oP '^batch_size = \K[0-9]+' <<<"${extra}" || echo 128)")") | $(mib "${idle}")"
    for d in 0 1; do
        line+=" | $(mib "$(vm "${pids[d]}" VmRSS)") / $(mib "$(vm "${pids[d]}" VmHWM)")"
    done
    rows+=("${line} | ${gbps} |")
    lab_stop_all
done

printf '\nrelease build, MTU %s, %s s UDP flood both ways (iperf3 -u -b 0 --bidir, 1392-byte payloads)\n\n' \
    "${MTU}" "${secs}"
echo "| profile | settings | packet buffers, MiB | VmRSS idle, MiB | A: VmRSS / VmHWM after flood, MiB | B: VmRSS / VmHWM after flood, MiB | delivered A->B / B->A, Gbit/s |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
