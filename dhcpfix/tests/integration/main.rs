//! dhcpfix's integration tests: one binary, one module per area, sharing
//! [`support`] (running the `dhcpfix` binary, the robustness sandbox, the
//! agent) and the kit of `dhcpfix-lab` (the lab, namespaces, the reference
//! model of the classifier).
//!
//! The tests run in parallel threads of this one process. What they share
//! is safe to share: every lab and sandbox has its own namespaces and work
//! directory (named by pid and a per-process counter), `ip netns add/del`
//! goes through one lock (the `/run/netns` mount race), the sandboxes'
//! signal cleanup is installed once per process, and nothing changes
//! process-wide state (umask, working directory, environment) except in
//! children.
//!
//! Tests that need root skip with a message otherwise, and fail instead of
//! skipping when `CI=true`.

mod support;

mod agent;
mod contrib;
mod daemonset_kubevirt;
mod datapath;
mod datapath_kernel;
mod deploy;
mod dhcpv6;
mod doctor;
mod every_netns;
mod faults;
mod fuzz_short;
mod hardening;
mod kubevirt;
mod lab_baseline;
mod lab_fix;
mod leases;
mod libvirt_hook;
mod libvirt_real;
mod macvtap;
mod namespaces;
mod reference;
mod security;
mod upgrade;
