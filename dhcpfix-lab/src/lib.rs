//! What the demo, the tests, the benchmarks and the fuzz targets need, and
//! the product does not:
//!
//! - [`lab`]: a KVM host in a box (network namespaces, a bridge, real
//!   dnsmasq, an emulated vhost-net tap, real DHCP clients in a "guest"),
//!   behind `dhcpfix demo` and the end-to-end tests;
//! - [`kit`]: the helpers they share, each written once: namespaces and
//!   sandboxes that clean up after themselves, running programs, taps and
//!   packet sockets, bpffs mounts, the privilege gate, and the independent
//!   reference model of the classifier with its frame builder and PRNG.
//!
//! It does not depend on the `dhcpfix` package (whose `demo` subcommand
//! depends on it).

pub mod kit;
pub mod lab;
