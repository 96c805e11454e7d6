//! The doctor's report, and its JSON (`dhcpfix doctor --json`): field
//! names and values are a contract (scripts and monitoring read them).
//! Tables for people are the CLI's.

use std::{fmt, net::Ipv4Addr};

use serde::Serialize;

use super::{fixes::OtherFix, rules::Verdict};
use crate::attach::{Method, Mode};

/// How much an item needs the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Action,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Action => "ACTION",
        })
    }
}

/// One finding about the host (kernel support, a note).
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub item: String,
    pub level: Level,
    pub detail: String,
}

impl Check {
    pub fn new(item: impl Into<String>, level: Level, detail: impl Into<String>) -> Self {
        Self {
            item: item.into(),
            level,
            detail: detail.into(),
        }
    }
}

/// dhcpfix's attachment to a tap.
#[derive(Clone, Debug, Serialize)]
pub struct DhcpfixState {
    pub mode: Option<Mode>,
    pub method: Method,
    pub ports: Vec<u16>,
}

/// One guest tap (tun/tap in tap mode, or macvtap/ipvtap).
///
/// In JSON the verdict is three fields, in this order: `verdict` (its
/// name), `level` and `detail` (the reason, a sentence).
#[derive(Clone, Debug, Serialize)]
pub struct TapReport {
    pub name: String,
    pub ifindex: u32,
    pub kind: String,
    /// `None` when the features could not be read.
    pub tx_checksum_offload: Option<bool>,
    /// The bridge it is a port of.
    pub bridge: Option<String>,
    /// Host DHCP servers (process names) serving that bridge.
    pub dhcp_servers: Vec<String>,
    pub dhcpfix: Option<DhcpfixState>,
    /// Other fixes that cover it (their rules).
    pub other_fixes: Vec<String>,
    /// What dhcpfix saw of each guest's DHCP on it, one line per guest
    /// (`dhcpfix leases` has the details).
    pub guests: Vec<String>,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// A UDP socket on port 67 of this namespace.
#[derive(Clone, Debug, Serialize)]
pub struct DhcpServer {
    pub address: Ipv4Addr,
    /// The device the socket is bound to (`SO_BINDTODEVICE`), if any.
    pub bound_device: Option<String>,
    /// `name[pid]` of the processes holding it (best effort).
    pub processes: Vec<String>,
    /// Interfaces it serves.
    pub serves: Vec<String>,
    pub inode: u64,
}

impl DhcpServer {
    /// Who it is, for a tap's `dhcp_servers`: its processes, or its socket.
    pub fn who(&self) -> String {
        if self.processes.is_empty() {
            format!("UDP {}:67", self.address)
        } else {
            self.processes.join(",")
        }
    }
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The network namespace examined.
    pub netns: crate::netns::NetnsInfo,
    /// The worst level of all items.
    pub verdict: Level,
    pub kernel: Vec<Check>,
    pub interfaces: Vec<TapReport>,
    pub dhcp_servers: Vec<DhcpServer>,
    pub other_fixes: Vec<OtherFix>,
    /// Findings about the other fixes, stale attachments and the like.
    pub notes: Vec<Check>,
    /// Commands that fix what needs action.
    pub actions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of a tap, field by field, as scripts read it.
    #[test]
    fn tap_json_is_the_contract() {
        let tap = TapReport {
            name: "vnet0".into(),
            ifindex: 7,
            kind: "tun".into(),
            tx_checksum_offload: Some(true),
            bridge: Some("virbr0".into()),
            dhcp_servers: vec!["dnsmasq[9]".into()],
            dhcpfix: None,
            other_fixes: vec![],
            guests: vec![],
            verdict: Verdict::AtRisk {
                bridge: Some("virbr0".into()),
                servers: vec!["dnsmasq[9]".into()],
            },
        };
        assert_eq!(
            serde_json::to_string(&tap).unwrap(),
            r#"{"name":"vnet0","ifindex":7,"kind":"tun","tx_checksum_offload":true,"bridge":"virbr0","dhcp_servers":["dnsmasq[9]"],"dhcpfix":null,"other_fixes":[],"guests":[],"verdict":"at-risk","level":"action","detail":"tx checksum offload on and no fix; port of virbr0, served by dnsmasq[9]"}"#
        );
        let covered = TapReport {
            dhcpfix: Some(DhcpfixState {
                mode: Some(Mode::Fill),
                method: Method::Tcx,
                ports: vec![68, 67],
            }),
            verdict: Verdict::Covered { method: Method::Tcx },
            ..tap
        };
        let json = serde_json::to_string(&covered).unwrap();
        assert!(
            json.ends_with(
                r#""dhcpfix":{"mode":"fill","method":"tcx","ports":[68,67]},"other_fixes":[],"guests":[],"verdict":"covered","level":"ok","detail":"dhcpfix attached (tcx, fill)"}"#
            ),
            "{json}"
        );
    }
}
