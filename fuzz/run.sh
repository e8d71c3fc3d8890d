#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, starting from the seed corpus, and
# fails on the first crash, leak, timeout or out-of-memory. What netns-scripts/test.sh runs in CI.
#   bash fuzz/run.sh [SECONDS] [TARGET...]        (default: 5 seconds, every target)
#
# Needs only the stable toolchain and crates.io: it installs cargo-fuzz when missing, and sets
# RUSTC_BOOTSTRAP=1 for it, because libFuzzer's instrumentation and the sanitizer use flags
# stable rustc accepts only with that variable. New inputs libFuzzer finds go to a scratch
# corpus, so the seeds in fuzz/corpus/ stay as committed. Crash inputs go to fuzz/artifacts/.
#
# The build goes to DHTUN_FUZZ_TARGET_DIR (default ~/.cache/dhtun/fuzz-target), outside the
# work tree, so a later run on the same machine (CI clones afresh) rebuilds only dhtun itself.
# It is optimized, with debug assertions and overflow checks, and by default without a
# sanitizer and with 16 codegen units: a third less build time for a short run, and what it
# hunts here (panics, overflows, hangs, memory growth) needs neither. DHTUN_FUZZ_SANITIZER=address
# builds with AddressSanitizer (cargo fuzz's own default) for long runs.
set -euo pipefail

fuzz_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
seconds=${1:-5}
if [[ ! ${seconds} =~ ^[0-9]+$ || ${seconds} -eq 0 ]]; then
    echo "usage: bash fuzz/run.sh [SECONDS] [TARGET...]   (SECONDS per target, at least 1; default 5)" >&2
    [[ ${seconds} == -h || ${seconds} == --help ]] && exit 0
    exit 2
fi
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(wire handshake device packet record private_record krpc config)
fi
target_dir=${DHTUN_FUZZ_TARGET_DIR:-${HOME}/.cache/dhtun/fuzz-target}
sanitizer=${DHTUN_FUZZ_SANITIZER:-none}
# The same options for build and run, or `cargo fuzz run` would build again with others.
options=(--target-dir "${target_dir}" --sanitizer "${sanitizer}" --codegen-units 16)

say() { printf 'fuzz: %s\n' "$*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
cd "${fuzz_dir}"
scratch=$(mktemp -d)
trap 'rm -rf "${scratch}"' EXIT
started=${SECONDS}
# Without a target name, cargo fuzz builds every target in one cargo invocation.
say "building ${targets[*]} (sanitizer ${sanitizer}, into ${target_dir})"
build() {
    if ! cargo fuzz build "${options[@]}" "$@" >"${scratch}/build.log" 2>&1; then
        cat "${scratch}/build.log" >&2
        exit 1
    fi
}
if (($# > 0)); then
    for target in "${targets[@]}"; do build "${target}"; done
else
    build
fi
say "built in $((SECONDS - started))s"

failed=()
for target in "${targets[@]}"; do
    mkdir -p "${scratch}/${target}" "${fuzz_dir}/artifacts/${target}"
    log="${scratch}/${target}.log"
    # Seeds and past failures first; libFuzzer adds its finds to the first, scratch, directory.
    corpora=("${scratch}/${target}" "${fuzz_dir}/corpus/${target}")
    [[ -d "${fuzz_dir}/regressions/${target}" ]] && corpora+=("${fuzz_dir}/regressions/${target}")
    if cargo fuzz run "${options[@]}" "${target}" "${corpora[@]}" -- \
        -max_total_time="${seconds}" -timeout=20 -rss_limit_mb=2048 \
        -print_final_stats=1 >"${log}" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "${log}")
        say "${target}: ${runs:-?} inputs in ${seconds}s, no failure"
    else
        say "${target}: FAILED; the end of its log:"
        tail -n 60 "${log}" >&2
        failed+=("${target}")
    fi
done

passed=$((${#targets[@]} - ${#failed[@]}))
if ((${#failed[@]} > 0)); then
    say "failing targets: ${failed[*]} (inputs in fuzz/artifacts/<target>/; replay one with"
    say "  cd fuzz && cargo run --example replay -- <target> artifacts/<target>/<file>)"
    printf 'fuzz: %d passed, %d failed\n' "${passed}" "${#failed[@]}"
    exit 1
fi
say "every target ran ${seconds}s without failure ($((SECONDS - started))s in all)"
printf 'fuzz: %d passed, 0 failed\n' "${passed}"
