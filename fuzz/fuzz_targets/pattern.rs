#![no_main]
//! See `dhcpfix_fuzz::targets::pattern`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhcpfix_fuzz::targets::pattern(data));
