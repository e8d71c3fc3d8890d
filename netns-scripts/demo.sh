#!/usr/bin/env bash
# Demo: build dhtun, bring up the namespace lab with two peers that know each other only by
# public key (netns-scripts/lab.sh up 2: a hub namespace running a DHT bootstrap node, and two
# peer namespaces), let them find each other through that DHT, ping across the tunnel over IPv4
# and IPv6 and into the subnet behind the other peer, print both daemons' status and the time
# from `dhtun up` to the first ping reply, and remove everything when it exits.
#
#   bash netns-scripts/demo.sh        (as root)
#
# Exits non-zero when a ping fails. Nothing leaves the lab's namespaces: underlay 198.18.0.0/24,
# overlay 100.64.0.0/24 and fd64::/64, subnets 100.65.1.0/24 and 100.65.2.0/24.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns-scripts/lib.sh
source "${here}/lib.sh"
usage() {
    echo "usage: bash netns-scripts/demo.sh   (as root; builds dhtun, runs the demo, cleans up)"
}
no_arguments "$@"

need_root demo.sh
ensure_tools ip:iproute2 ping:iputils-ping ss:iproute2 setsid:util-linux timeout:coreutils \
    cc:build-essential make:build-essential pkg-config:pkg-config
ensure_tun
ensure_cargo

log "building dhtun (cargo build --release)"
(cd "${LAB_REPO}" && cargo build --release)
DHTUN_BIN=${DHTUN_BIN:-${CARGO_TARGET_DIR:-${LAB_REPO}/target}/release/dhtun}
export DHTUN_BIN

# The demo's own lab, so that it leaves alone a lab someone else has up.
export DHTUN_LAB=demo
lab() { bash "${here}/lab.sh" "$@"; }
state=/run/dhtun-${DHTUN_LAB}
[[ -e ${state} ]] && die "a demo lab is already up (${state}); remove it with: DHTUN_LAB=demo bash ${here}/lab.sh down"

finish() {
    local rc=$?
    set +e
    if ((rc != 0)) && [[ -d ${state} ]]; then
        lab logs
    fi
    lab down
    exit "${rc}"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

lab up 2

# The first reply, timed from the moment the last daemon was started: one echo every 20 ms until
# one comes back (the first ones wait for the DHT lookup and the handshake).
if ! lab exec 1 ping -n -q -c 1 -i 0.02 -w 10 100.64.0.2 >/dev/null; then
    die "peer 1 got no reply from 100.64.0.2 within 10 s"
fi
replied=${EPOCHREALTIME}
up_at=$(cat "${state}/p2.up_at")
first_ms=$(awk -v a="${up_at}" -v b="${replied}" 'BEGIN { printf "%d", (b - a) * 1000 }')

failed=0
ping_from() {
    local peer=$1 addr=$2 out
    if out=$(lab exec "${peer}" ping -n -c 1 -W 2 "${addr}" 2>&1); then
        log "peer ${peer} -> ${addr}: $(grep -o 'time=[0-9.]* ms' <<<"${out}")"
    else
        warn "peer ${peer} -> ${addr}: no reply"
        failed=1
    fi
}
ping_from 1 100.64.0.2
ping_from 2 100.64.0.1
ping_from 1 fd64::2
ping_from 2 fd64::1
ping_from 1 100.65.2.1
ping_from 2 100.65.1.1

log "dhtun status of both peers"
status=$(lab status) || failed=1
printf '%s\n' "${status}"
# Each peer reached the other at its underlay address; at least one of them found the other in
# the DHT (the other may have learnt the address from that peer's handshake: "roamed").
for addr in 198.18.0.1:51820 198.18.0.2:51820; do
    grep -q "endpoint: ${addr} (" <<<"${status}" || {
        warn "no peer shows endpoint ${addr}"
        failed=1
    }
done
grep -q 'endpoint: 198\.18\.0\.[12]:51820 (dht)' <<<"${status}" || {
    warn "no endpoint was found through the DHT"
    failed=1
}

((failed)) && die "demo failed: see the messages and the daemon logs above"
log "time from \`dhtun up\` of peer 2 to the first ping reply from it: ${first_ms} ms"
log "demo passed: two peers that knew only each other's public key found each other through the DHT and reach each other over IPv4, IPv6 and the subnets behind them"
