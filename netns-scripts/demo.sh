#!/usr/bin/env bash
# Demo: build dhtun, bring up two peers A and B in network namespaces joined by a veth pair,
# ping across the tunnel over IPv4 and IPv6, print both daemons' status, and clean up.
# Run as root on a Debian machine:  sudo bash netns-scripts/demo.sh
# Exits non-zero when a ping fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns-scripts/lib.sh
source "${here}/lib.sh"

need_root demo.sh
ensure_tools ip:iproute2 ping:iputils-ping timeout:coreutils \
    cc:build-essential make:build-essential pkg-config:pkg-config
ensure_tun
ensure_cargo

log "building dhtun (cargo build --release)"
(cd "${LAB_REPO}" && cargo build --release)

LAB_TAG=demo
lab_init
log "creating namespaces $(lab_ns a) and $(lab_ns b) on 198.18.0.0/24"
lab_ns_pair
lab_start_pair ""

failed=0
lab_ping "${NS_A}" 100.64.0.2 || failed=1
lab_ping "${NS_B}" 100.64.0.1 || failed=1
lab_ping "${NS_A}" fd64::2 || failed=1
lab_ping "${NS_B}" fd64::1 || failed=1

for iface in "${IFACE_A}" "${IFACE_B}"; do
    log "dhtun status ${iface}"
    "${DHTUN_BIN}" status "${iface}" || failed=1
done

if ((failed)); then
    lab_show_logs
    die "demo failed: see the messages and daemon logs above"
fi
log "demo passed: A and B reach each other through dhtun over IPv4 and IPv6"
