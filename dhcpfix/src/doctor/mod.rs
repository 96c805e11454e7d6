//! `dhcpfix doctor`: reads the host and says which guests are at risk.
//!
//! - [`probes`] reads the host: the kernel, the pin directory, links and
//!   their offload, the sockets on UDP port 67 and their owners, what
//!   `iptables-save` and `tc` print;
//! - [`fixes`] parses the other checksum fixes out of the tools' output;
//! - [`rules`] judges: each tap's [`Verdict`] (with its level and reason),
//!   the kernel checks, which interfaces a DHCP server serves, notes and
//!   actions;
//! - [`report`] holds the report and its JSON; the tables are the CLI's.
//!
//! [`examine`] runs them in that order. Everything is read in the caller's
//! network namespace. External tools (`iptables-save`, `tc`) are optional:
//! when absent, their part of the report says so.

pub mod fixes;
pub mod probes;
pub mod report;
pub mod rules;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

pub use fixes::{OtherFix, OtherFixKind};
pub use report::{Check, DhcpServer, DhcpfixState, Level, Report, TapReport};
pub use rules::Verdict;

use crate::{
    leases::{self, Guest},
    netdev::{self, Link, NetlinkError},
    netns::{Netns, NetnsError},
};

/// Errors that stop the doctor from reporting at all.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// Listing the network devices (`RTM_GETLINK`, `RTM_GETADDR`).
    #[error(transparent)]
    Links(#[from] NetlinkError),
    /// Entering or naming the namespace to examine.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// What to examine.
#[derive(Clone, Debug)]
pub struct Options {
    pub pin_dir: PathBuf,
    /// BTF file instead of the running kernel's.
    pub btf: Option<PathBuf>,
    /// The network namespace to examine (default: the caller's).
    pub netns: Option<Netns>,
}

/// Examines the host, in `opts.netns` if given (on a thread that enters
/// it: the tools the doctor runs inherit it).
pub fn examine(opts: &Options) -> Result<Report, DoctorError> {
    match &opts.netns {
        Some(ns) => ns.run(|| examine_here(opts))?,
        None => examine_here(opts),
    }
}

fn examine_here(opts: &Options) -> Result<Report, DoctorError> {
    let here = Netns::current()?.info();
    let host = crate::netns::host_cookie();
    let links = netdev::links_with_addresses()?;
    let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.ifindex, l)).collect();
    let mut notes = Vec::new();

    let kernel_facts = probes::kernel(opts);
    let kernel = rules::kernel_checks(&kernel_facts);
    let csum_mask = rules::csum_mask(&kernel_facts);

    let (attachments, guests) = match probes::attachments(&opts.pin_dir) {
        Ok(found) => found,
        Err(e) => {
            notes.push(Check::new(
                "dhcpfix attachments",
                Level::Warn,
                format!("cannot read {}: {e}", opts.pin_dir.display()),
            ));
            Default::default()
        }
    };
    notes.extend(
        attachments
            .iter()
            .filter(|a| !a.attached)
            .map(rules::stale_attachment),
    );

    let dhcp_servers = match probes::dhcp_sockets() {
        Ok(sockets) => rules::dhcp_servers(sockets, &links),
        Err(e) => {
            notes.push(Check::new("DHCP servers", Level::Warn, e));
            Vec::new()
        }
    };

    let mut other_fixes = match probes::find_tool("iptables-save") {
        None => {
            notes.push(Check::new(
                "iptables",
                Level::Ok,
                "iptables-save not installed: no CHECKSUM rules to look at",
            ));
            Vec::new()
        }
        Some(save) => match probes::iptables_save(&save) {
            Ok(dump) => fixes::parse_iptables_checksum(&dump),
            Err(e) => {
                notes.push(Check::new("iptables", Level::Warn, e));
                Vec::new()
            }
        },
    };

    let taps: Vec<&Link> = links
        .iter()
        .filter(|l| l.is_tap() || l.is_rx_handler_tap())
        .collect();
    // tc is asked only about the taps and bridges that matter.
    let mut tc_devices: BTreeSet<String> = BTreeSet::new();
    for tap in &taps {
        tc_devices.insert(tap.name.clone());
        if let Some(br) = tap.master.and_then(|m| by_index.get(&m)) {
            tc_devices.insert(br.name.clone());
        }
    }
    if !tc_devices.is_empty() {
        match probes::find_tool("tc") {
            None => notes.push(Check::new(
                "tc",
                Level::Ok,
                "tc not installed: no csum actions to look at",
            )),
            Some(tc) => {
                for dev in &tc_devices {
                    // The egress first, then the root; the first csum action
                    // found is the device's.
                    let found = [true, false].into_iter().find_map(|egress| {
                        probes::tc_filter_show(&tc, dev, egress)
                            .and_then(|out| fixes::parse_tc_csum(dev, &out))
                    });
                    other_fixes.extend(found);
                }
            }
        }
    }

    let mut interfaces = Vec::new();
    for tap in taps {
        let bridge = tap
            .master
            .and_then(|m| by_index.get(&m))
            .filter(|l| l.is_bridge())
            .map(|l| l.name.clone());
        let served_by = rules::served_by(&dhcp_servers, &tap.name, bridge.as_deref());
        let attachment = attachments
            .iter()
            .find(|a| a.name == tap.name && a.attached && a.ifindex == tap.ifindex);
        let fixes: Vec<&OtherFix> = other_fixes
            .iter()
            .filter(|f| fixes::fix_applies(f, &tap.name, bridge.as_deref()))
            .collect();
        let offload = if tap.is_rx_handler_tap() {
            None
        } else {
            probes::tx_checksum_offload(&tap.name, csum_mask)
        };
        let seen: Vec<&Guest> = guests
            .iter()
            .filter(|g| attachment.is_some_and(|a| a.ifindex == g.ifindex))
            .collect();
        let verdict = rules::judge(tap, offload, attachment, &fixes, bridge.as_deref(), &served_by);
        let verdict = rules::with_evidence(verdict, &seen, host);
        if matches!(verdict, Verdict::Covered { .. }) && !fixes.is_empty() {
            notes.push(rules::overlap(&tap.name, &fixes));
        }
        interfaces.push(TapReport {
            name: tap.name.clone(),
            ifindex: tap.ifindex,
            kind: tap.kind.clone().unwrap_or_default(),
            tx_checksum_offload: offload,
            bridge,
            dhcp_servers: served_by,
            dhcpfix: attachment.map(|a| DhcpfixState {
                mode: a.mode,
                method: a.method,
                ports: a.ports.clone(),
            }),
            other_fixes: fixes.iter().map(|f| f.rule.clone()).collect(),
            guests: seen.iter().map(|g| leases::describe(g, host)).collect(),
            verdict,
        });
    }
    if interfaces.is_empty() {
        notes.push(Check::new(
            "guest taps",
            Level::Ok,
            "no tun/tap or macvtap devices in this network namespace",
        ));
    }
    if dhcp_servers.is_empty() {
        notes.push(Check::new(
            "DHCP servers",
            Level::Ok,
            "nothing on this host listens on UDP port 67 (in this network namespace)",
        ));
    }

    Ok(Report {
        netns: here,
        verdict: rules::overall(&kernel, &notes, &interfaces),
        actions: rules::actions(&interfaces),
        kernel,
        interfaces,
        dhcp_servers,
        other_fixes,
        notes,
    })
}
