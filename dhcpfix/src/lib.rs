//! dhcpfix: completes the UDP checksum of DHCP packets on KVM guests' taps.
//!
//! The library behind the `dhcpfix` command: resolving the kernel layout
//! from BTF ([`kernel_layout`]), the pin directory ([`bpffs`]), loading the
//! classifier once ([`program`]), attaching it per interface ([`attach`]),
//! reading counters ([`counters`]). [`integrations`] fits it into libvirt
//! (domain XML for the hook) and holds the checks behind `dhcpfix doctor`.
//!
//! With the `test-run` feature (off by default; the tests and the
//! benchmarks turn it on), `testrun` runs the classifier under
//! `BPF_PROG_TEST_RUN`. The network-namespace lab behind `dhcpfix demo` and
//! the end-to-end tests is the `dhcpfix-lab` crate.

pub mod agent;
pub mod attach;
pub mod bpffs;
pub mod cli;
pub mod counters;
pub mod integrations;
pub mod kernel_layout;
pub mod metrics;
pub mod program;
pub mod sys;
#[cfg(feature = "test-run")]
pub mod testrun;
