//! What the demo, the tests and the benchmarks need, and the product does
//! not: [`lab`], a KVM host in a box (network namespaces, a bridge, real
//! dnsmasq, an emulated vhost-net tap, real DHCP clients in a "guest"),
//! behind `dhcpfix demo` and the end-to-end tests.
//!
//! It does not depend on the `dhcpfix` package (whose `demo` subcommand
//! depends on it).

pub mod lab;
