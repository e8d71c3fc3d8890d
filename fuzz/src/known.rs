//! Known defects of dhtun the targets found, tolerated so the fuzz step in CI stays green until
//! they are fixed in `src/`. Each is a narrow predicate; `DHTUN_FUZZ_STRICT=1` turns every
//! tolerance off, so the reproducers under `fuzz/regressions/` fail again:
//!
//! ```sh
//! DHTUN_FUZZ_STRICT=1 RUSTC_BOOTSTRAP=1 cargo fuzz run packet fuzz/regressions/packet/*
//! ```
//!
//! When a defect is fixed, delete its predicate here and the call that uses it.

use std::sync::OnceLock;

/// Whether known defects are tolerated (the default) or reported like any other failure.
pub fn tolerated() -> bool {
    static STRICT: OnceLock<bool> = OnceLock::new();
    !*STRICT.get_or_init(|| std::env::var_os("DHTUN_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

/// `offload::split` of a GSO super-packet with headers and no payload returns `Ok(1)` but
/// emits nothing (`payload.len().div_ceil(mss).max(1)` counts a segment `chunks` never yields),
/// so the packet vanishes without being sent or counted as a drop.
pub fn split_counts_a_segment_it_never_emits(
    _payload_len: usize,
    _count: usize,
    _emitted: usize,
) -> bool {
    // Fixed: split now emits one headers-only packet.
    false
}

/// `Config::parse` shows toml's `message()`, which is empty for some syntax errors (`mtu =`
/// at the end of the file gives `FILE:LINE: ` and nothing else) and spans several lines for
/// others (`invalid table header\nexpected ...`), where the README promises one line.
pub fn config_message_empty_or_multiline(_message: &str) -> bool {
    // Fixed: Config::parse makes every message one non-empty line.
    false
}
