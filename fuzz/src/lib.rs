//! The fuzz targets' bodies ([`targets`]) and the test support they check
//! against (the reference model and frame builder of `dhcpfix/tests`).

#[path = "../../dhcpfix/tests/support/mod.rs"]
pub mod support;
pub mod targets;
