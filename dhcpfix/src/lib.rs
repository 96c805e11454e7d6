//! dhcpfix: completes the UDP checksum of DHCP packets on KVM guests' taps.
//!
//! The library behind the `dhcpfix` command: resolving the kernel layout
//! from BTF ([`kernel_layout`]), the pin directory ([`bpffs`]), loading the
//! classifier once ([`program`]), attaching it per interface ([`attach`]),
//! reading counters ([`counters`]), running it under `BPF_PROG_TEST_RUN`
//! ([`testrun`]) and the network-namespace lab behind `dhcpfix demo` and
//! the end-to-end tests ([`lab`]). [`integrations`] fits it into libvirt
//! (domain XML for the hook) and holds the checks behind `dhcpfix doctor`.

pub mod agent;
pub mod attach;
pub mod bpffs;
pub mod counters;
pub mod doctor;
pub mod integrations;
pub mod kernel_layout;
pub mod lab;
pub mod metrics;
pub mod netdev;
pub mod program;
pub mod sys;
pub mod testrun;
