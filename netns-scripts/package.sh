#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (installed from crates.io when missing): the binary,
# both systemd units, the man pages, the shell completions and the docs (Cargo.toml,
# [package.metadata.deb]). With --check (root) it then installs the package, checks it, purges it
# and checks that nothing is left; the test command runs that on the debug build.
#   bash netns-scripts/package.sh            release build: target/debian/dhtun_*.deb
#   bash netns-scripts/package.sh --debug    package the debug build instead (quicker; for checks)
#   bash netns-scripts/package.sh --debug --check
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns-scripts/lib.sh
source "${here}/lib.sh"
usage() {
    cat <<USAGE
usage: bash netns-scripts/package.sh [--debug] [--check]
  --debug   package target/debug/dhtun (cargo build) instead of a release build
  --check   as root: dpkg -i the package, check it, dpkg -P it, check nothing is left
USAGE
}
profile=release
check=0
for arg in "$@"; do
    case ${arg} in
        --debug) profile=dev ;;
        --check) check=1 ;;
        *) other_option "${arg}" ;;
    esac
done
cd "${LAB_REPO}"
ensure_cargo
target=${CARGO_TARGET_DIR:-${LAB_REPO}/target}

if ! cargo deb --version >/dev/null 2>&1; then
    log "installing cargo-deb (cargo install --locked cargo-deb; about 3 minutes on 2 cores)"
    installed_at=${SECONDS}
    cargo install --locked cargo-deb
    log "cargo-deb installed in $((SECONDS - installed_at))s"
fi

if [[ ${profile} == release ]]; then
    log "cargo build --release"
    cargo build --release
    bin="${target}/release/dhtun"
else
    log "cargo build"
    cargo build
    bin="${target}/debug/dhtun"
fi

# What the package holds besides the binary is generated from it and from systemd/.
gen="${target}/package"
rm -rf "${gen}"
mkdir -p "${gen}/systemd" "${gen}/completions"
"${bin}" manpages "${gen}/man" >/dev/null
"${bin}" completions bash >"${gen}/completions/dhtun"
"${bin}" completions zsh >"${gen}/completions/_dhtun"
"${bin}" completions fish >"${gen}/completions/dhtun.fish"
# The units name /usr/local/bin for a hand install; the package puts dhtun in /usr/bin.
for unit in systemd/*.service; do
    sed -e 's|/usr/local/bin/dhtun|/usr/bin/dhtun|g' \
        -e 's|/usr/local/share/doc/dhtun|/usr/share/doc/dhtun|g' \
        "${unit}" >"${gen}/systemd/$(basename "${unit}")"
done

log "cargo deb --no-build --profile ${profile}"
fast=()
[[ ${profile} == dev ]] && fast=(--fast)
deb=$(cargo deb --no-build --profile "${profile}" "${fast[@]}" | tail -n 1)
[[ -f ${deb} ]] || die "cargo deb did not report the package it made (got: ${deb})"
log "built ${deb}"
dpkg-deb -c "${deb}"

((check)) || exit 0
[[ ${EUID} -eq 0 ]] || die "--check installs the package: run it as root"
bash "${here}/package-check.sh" "${deb}"
