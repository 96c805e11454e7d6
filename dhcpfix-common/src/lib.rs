//! Types and pure logic shared by the dhcpfix datapath (`dhcpfix-ebpf`) and
//! its loader (`dhcpfix`).
//!
//! Everything here is `no_std`, allocation-free and `#[repr(C)]` where it
//! crosses the kernel boundary, so that the eBPF program and userspace agree
//! on every byte. The frame parser is generic over [`frame::Frame`], so the
//! exact code that runs in the kernel is unit-tested on the host.
#![no_std]

pub mod checksum;
pub mod config;
pub mod counters;
pub mod dhcp;
pub mod event;
pub mod frame;
pub mod guest;
pub mod key;
pub mod layout;
pub mod settings;

/// Version of everything shared through the pin directory: map names, key
/// and value records, the program's globals. Bump it when any of them
/// changes, so that a newer dhcpfix refuses a program pinned by an older one
/// instead of writing records it would misread.
pub const PIN_ABI: u32 = if cfg!(feature = "next-abi") { 3 } else { 2 };

/// Name of the classifier inside the eBPF object.
pub const PROGRAM_NAME: &str = "dhcpfix";
/// Name of the per-CPU counters map (key: [`key::IfaceKey`], value: [`counters::Counters`]).
pub const COUNTERS_MAP: &str = "DHCPFIX_COUNTERS";
/// Name of the per-interface configuration map (key: [`key::IfaceKey`], value: [`config::IfaceConfig`]).
pub const CONFIG_MAP: &str = "DHCPFIX_CONFIG";
/// Name of the watched-ports bitmap (array of [`config::PORT_BITMAP_WORDS`] u64).
pub const PORTS_MAP: &str = "DHCPFIX_PORTS";
/// Name of the run-time settings array (one [`settings::Settings`]).
pub const SETTINGS_MAP: &str = "DHCPFIX_SETTINGS";
/// Name of the guests map (key: [`guest::GuestKey`], value: [`guest::GuestState`]).
pub const GUESTS_MAP: &str = "DHCPFIX_GUESTS";
/// Name of the classifier that watches what guests send (tap ingress).
pub const INGRESS_PROGRAM_NAME: &str = "dhcpfix_ingress";
/// Name of the ring buffer of fill events (records: [`event::FillEvent`]).
pub const EVENTS_MAP: &str = "DHCPFIX_EVENTS";
/// Name of the read-only global holding the kernel layout.
pub const LAYOUT_GLOBAL: &str = "DHCPFIX_LAYOUT";
/// Name of the read-only global that enables the test-run override.
pub const TEST_MODE_GLOBAL: &str = "DHCPFIX_TEST_MODE";
/// Largest number of interfaces one loaded program serves.
pub const MAX_INTERFACES: u32 = 4096;
