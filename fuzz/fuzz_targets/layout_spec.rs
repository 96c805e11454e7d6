#![no_main]
//! See `dhcpfix_fuzz::targets::layout_spec`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhcpfix_fuzz::targets::layout_spec(data));
