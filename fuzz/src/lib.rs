//! The bodies of the fuzz targets ([`targets`]), checked against the test
//! kit's reference model (`dhcpfix_lab::kit::reference`). cargo-fuzz runs
//! them through `fuzz_targets/` (`cargo xtask fuzz`); dhcpfix's tests run
//! them briefly on every `cargo test` (`fuzz_short`), without libFuzzer.

pub mod targets;
