#!/usr/bin/env bash
# Installs a dhtun .deb, checks what it installed, purges it and checks that nothing is left.
# Refuses to run when a dhtun package is already installed (the purge would remove it).
#   bash netns-scripts/package-check.sh target/debian/dhtun_VERSION_ARCH.deb   (as root)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns-scripts/lib.sh
source "${here}/lib.sh"
usage() {
    echo "usage: bash netns-scripts/package-check.sh PACKAGE.deb   (as root)"
}
(($# == 1)) || {
    usage >&2
    exit 2
}
[[ $1 != -h && $1 != --help ]] || {
    usage
    exit 0
}
deb=$1
[[ -f ${deb} ]] || die "no package at ${deb}"
[[ ${EUID} -eq 0 ]] || die "the package check installs the package: run it as root"
ensure_tools man:man-db systemd-analyze:systemd dpkg:dpkg
if dpkg-query -W -f '${Status}' dhtun 2>/dev/null | grep -q 'installed'; then
    die "a dhtun package is already installed here; the check would purge it"
fi

files=$(dpkg-deb -c "${deb}" | awk '{print $6}' | sed 's|^\./|/|' | grep -v '/$')
cleanup() {
    # Whatever failed, do not leave the package behind.
    dpkg -P dhtun >/dev/null 2>&1 || true
}
trap cleanup EXIT

log "dpkg -i ${deb}"
dpkg -i "${deb}"
log "installed: $(dhtun --version)"
[[ $(command -v dhtun) == /usr/bin/dhtun ]] || die "dhtun is not /usr/bin/dhtun: $(command -v dhtun)"
log "man -w dhtun: $(man -w dhtun)"
log "man -w 5 dhtun.toml: $(man -w 5 dhtun.toml)"
man -w dhtun-up >/dev/null || die "no man page dhtun-up(8)"
mode=$(stat -c '%a %U' /etc/dhtun)
[[ ${mode} == "700 root" ]] || die "/etc/dhtun is ${mode}, not 700 root"
log "/etc/dhtun: mode ${mode}"
# Nothing enabled: no dhtun unit is linked into any .wants directory.
enabled=$(find /etc/systemd/system -name 'dhtun*' 2>/dev/null || true)
[[ -z ${enabled} ]] || die "installing enabled units: ${enabled}"
units=/usr/lib/systemd/system
work=$(mktemp -d)
cp "${units}/dhtun-dht-node.service" "${work}/"
# A template is verified as one instance of it.
cp "${units}/dhtun@.service" "${work}/dhtun@verify.service"
(cd "${work}" && systemd-analyze verify ./dhtun-dht-node.service ./dhtun@verify.service)
rm -rf "${work}"
log "systemd-analyze verify: both installed units pass"

log "dpkg -P dhtun"
dpkg -P dhtun
trap - EXIT
left=()
for file in ${files}; do
    [[ -e ${file} ]] && left+=("${file}")
done
[[ -e /etc/dhtun ]] && left+=(/etc/dhtun)
((${#left[@]} == 0)) || die "left after purge: ${left[*]}"
log "purged: none of its $(wc -w <<<"${files}") files, nor /etc/dhtun, is left"
