#!/usr/bin/env bash
# Checks the systemd units with `systemd-analyze verify` and prints their exposure level
# (`systemd-analyze security`). Uses the binary built in target/ (release if present, else
# debug) in place of /usr/local/bin/dhtun, so nothing is installed.
#   bash netns-scripts/verify-units.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns-scripts/lib.sh
source "${here}/lib.sh"
usage() {
    echo "usage: bash netns-scripts/verify-units.sh   (systemd-analyze verify and security of systemd/)"
}
no_arguments "$@"
cd "${LAB_REPO}"

ensure_tools systemd-analyze:systemd
bin="${CARGO_TARGET_DIR:-${LAB_REPO}/target}/release/dhtun"
[[ -x ${bin} ]] || bin="${CARGO_TARGET_DIR:-${LAB_REPO}/target}/debug/dhtun"
[[ -x ${bin} ]] || die "no dhtun binary in target/: run cargo build first"

work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT
for unit in systemd/*.service; do
    name=$(basename "${unit}")
    # A template is verified as one instance of it.
    [[ ${name} == *@.service ]] && name=${name/@.service/@verify.service}
    sed "s|/usr/local/bin/dhtun|${bin}|g" "${unit}" >"${work}/${name}"
done
(cd "${work}" && systemd-analyze verify ./*.service)
for unit in "${work}"/*.service; do
    printf '%s: ' "$(basename "${unit}")"
    systemd-analyze security --offline=yes "${unit}" 2>/dev/null | grep -o 'Overall exposure level.*' || echo "(no security report)"
done
echo "systemd units verified"
