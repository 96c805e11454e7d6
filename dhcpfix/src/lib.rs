//! dhcpfix: completes the UDP checksum of DHCP packets on KVM guests' taps.
//!
//! The library behind the `dhcpfix` command (whose command line, `cli/`,
//! is the binary's own). From the bottom up:
//!
//! - [`netdev`]: what the kernel says about devices (rtnetlink, link
//!   events, ethtool, sock_diag, `if_nametoindex`) and the capabilities
//!   dhcpfix needs; [`netns`]: naming, entering and finding network
//!   namespaces; [`sys`]: the `bpf(2)` commands aya lacks;
//! - [`kernel_layout`] (offsets from BTF), [`pins`] (the pin directory: the
//!   one owner of pins, links and map entries), [`program`] (loading the
//!   classifier once);
//! - [`attach`] (per interface and namespace), [`counters`], [`leases`]
//!   (each guest's DHCP state), [`metrics`];
//! - [`agent`] (`dhcpfix run`), [`doctor`] (probes, fixes, rules, report),
//!   [`integrations`] (libvirt's domain XML, syslog for hooks);
//!
//! With the `test-run` feature (off by default; the tests and the
//! benchmarks turn it on), `testrun` runs the classifier under
//! `BPF_PROG_TEST_RUN`. The network-namespace lab behind `dhcpfix demo` and
//! the end-to-end tests is the `dhcpfix-lab` crate.

pub mod agent;
pub mod attach;
pub mod counters;
pub mod doctor;
pub mod integrations;
pub mod kernel_layout;
pub mod leases;
pub mod metrics;
pub mod netdev;
pub mod netns;
pub mod pins;
pub mod program;
pub mod sys;
#[cfg(feature = "test-run")]
pub mod testrun;
