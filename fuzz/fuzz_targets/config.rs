#![no_main]
//! See `dhcpfix_fuzz::targets::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhcpfix_fuzz::targets::config(data));
