#!/usr/bin/env bash
# The project's test command: formatting, lints, and every test including the network-namespace
# tests (tests/netns/). As root it installs what is missing and makes the namespace tests
# mandatory (DHTUN_REQUIRE_NETNS=1); without root they are skipped, and this script says so.
#   bash netns-scripts/test.sh        (as root)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=netns-scripts/lib.sh
source "${here}/lib.sh"
usage() {
    cat <<EOF
usage: bash netns-scripts/test.sh   (as root; without root the namespace tests are skipped)
  runs cargo fmt --check, cargo clippy -D warnings, every test, the systemd unit checks, the
  Debian package check and a few seconds of each fuzz target (DHTUN_FUZZ_SECONDS, default 5; 0
  skips them)
EOF
}
no_arguments "$@"
cd "${LAB_REPO}"

started=${SECONDS}
step() {
    printf '\n\033[1m==> [%ss] %s\033[0m\n' "$((SECONDS - started))" "$*" >&2
}

root=0
[[ ${EUID} -eq 0 ]] && root=1

if ((root)); then
    step "checking system packages"
    ensure_tools ip:iproute2 ping:iputils-ping ps:procps timeout:coreutils nft:nftables \
        conntrack:conntrack cc:build-essential make:build-essential pkg-config:pkg-config
    ensure_tun
fi
ensure_cargo

for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        have rustup || die "cargo ${component/rustfmt/fmt} is missing and rustup is not there to add it"
        step "rustup component add ${component}"
        rustup component add "${component}"
    fi
done

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

if ((root)); then
    step "DHTUN_REQUIRE_NETNS=1 cargo test --all-targets --no-fail-fast"
    DHTUN_REQUIRE_NETNS=1 timeout 1200 cargo test --all-targets --no-fail-fast
else
    step "cargo test --all-targets --no-fail-fast (not root)"
    cargo test --all-targets --no-fail-fast
    printf '\nNOTE: not root, so the network-namespace tests (tests/netns/) were SKIPPED.\n' >&2
    printf '      Run as root to include them: sudo bash netns-scripts/test.sh\n' >&2
fi

if ((root)); then
    step "systemd units: systemd-analyze verify and security (netns-scripts/verify-units.sh)"
    bash netns-scripts/verify-units.sh

    # The Debian package, from the debug build the tests just made: dpkg -i, dhtun --version,
    # man -w, systemd-analyze verify on the installed units, dpkg -P, nothing left.
    step "Debian package: build, install, check, purge (netns-scripts/package.sh --debug --check)"
    bash netns-scripts/package.sh --debug --check
fi

# A few seconds of every fuzz target (fuzz/README.md); installs cargo-fuzz when missing and
# fails on any crash. DHTUN_FUZZ_SECONDS sets the time per target; 0 skips the step.
fuzz_seconds=${DHTUN_FUZZ_SECONDS:-5}
if ((fuzz_seconds > 0)); then
    step "fuzz: every target for ${fuzz_seconds}s (bash fuzz/run.sh)"
    bash fuzz/run.sh "${fuzz_seconds}"
fi

step "all checks passed"
