#![no_main]
//! See `dhcpfix_fuzz::targets::btf`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhcpfix_fuzz::targets::btf(data));
