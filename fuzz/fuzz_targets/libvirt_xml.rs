#![no_main]
//! See `dhcpfix_fuzz::targets::libvirt_xml`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| dhcpfix_fuzz::targets::libvirt_xml(data));
