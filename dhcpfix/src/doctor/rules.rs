//! The doctor's judgements: what protects (or fails to protect) each tap
//! ([`Verdict`], with its level and its reason), what the kernel facts
//! mean, which interfaces a DHCP server serves, and the notes and actions
//! that follow. Pure functions of what [`super::probes`] read.

use std::fmt;

use aya::util::KernelVersion;
use serde::{ser::SerializeStruct, Serialize, Serializer};

use super::{
    fixes::{OtherFix, OtherFixKind},
    probes::{KernelFacts, ServerSocket},
    report::{Check, DhcpServer, Level, TapReport},
};
use crate::{
    attach::{Attachment, Method, Mode},
    kernel_layout,
    leases::{self, Guest},
    netdev::{caps::Operation, Link},
};
use dhcpfix_common::guest::State;

/// What protects (or fails to protect) one guest tap, and why.
///
/// In the report it is three fields: `verdict` ([`Verdict::name`]),
/// `level` and `detail` (the reason as a sentence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// dhcpfix attached in fill mode.
    Covered { method: Method },
    /// dhcpfix attached in audit mode: counted, not fixed.
    Audit,
    /// No tx checksum offload: the kernel completes checksums itself.
    NoOffload,
    /// An iptables `CHECKSUM --checksum-fill` rule covers its bridge.
    CoveredByIptables { applies_to: String },
    /// A tc `csum` action on the tap or its bridge.
    CoveredByTc { device: String },
    /// Offload on, no fix, and host DHCP servers (`servers`) serve it.
    AtRisk {
        bridge: Option<String>,
        servers: Vec<String>,
    },
    /// Offload on, no fix, but no host DHCP server serves it: only a DHCP
    /// server in another guest can send it partial checksums.
    Exposed { bridge: Option<String> },
    /// macvtap/ipvtap (`kind`): dhcpfix cannot serve it (docs/macvtap.md).
    Unsupported { kind: String },
    /// Its offload state could not be read.
    Unknown,
    /// dhcpfix is attached (`mode`) and saw a guest throw replies away
    /// (`evidence`, as [`leases::describe`] says it): in audit mode, the
    /// proof the fix is needed; in fill mode, something else is wrong.
    Rejecting { mode: Option<Mode>, evidence: String },
}

impl Verdict {
    /// Its name in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Covered { .. } => "covered",
            Self::Audit => "audit",
            Self::NoOffload => "no-offload",
            Self::CoveredByIptables { .. } => "covered-by-iptables",
            Self::CoveredByTc { .. } => "covered-by-tc",
            Self::AtRisk { .. } => "at-risk",
            Self::Exposed { .. } => "exposed",
            Self::Unsupported { .. } => "unsupported",
            Self::Unknown => "unknown",
            Self::Rejecting { .. } => "rejecting",
        }
    }

    pub fn level(&self) -> Level {
        match self {
            Self::Covered { .. }
            | Self::NoOffload
            | Self::CoveredByIptables { .. }
            | Self::CoveredByTc { .. } => Level::Ok,
            Self::Audit | Self::Exposed { .. } | Self::Unsupported { .. } | Self::Unknown => Level::Warn,
            Self::AtRisk { .. } | Self::Rejecting { .. } => Level::Action,
        }
    }

    /// The reason, as a sentence.
    pub fn detail(&self) -> String {
        let port_of = |bridge: &Option<String>| {
            bridge
                .as_ref()
                .map_or_else(|| "not a bridge port".to_owned(), |b| format!("port of {b}"))
        };
        match self {
            Self::Covered { method } => format!("dhcpfix attached ({method}, fill)"),
            Self::Audit => "dhcpfix attached in audit mode: counts, fixes nothing".into(),
            Self::NoOffload => {
                "tx checksum offload off: the kernel completes checksums before the guest".into()
            }
            Self::CoveredByIptables { applies_to } => format!("iptables CHECKSUM rule for {applies_to}"),
            Self::CoveredByTc { device } => format!("tc csum action on {device}"),
            Self::AtRisk { bridge, servers } => format!(
                "tx checksum offload on and no fix; {}, served by {}",
                port_of(bridge),
                servers.join(", ")
            ),
            Self::Exposed { bridge } => format!(
                "tx checksum offload on, no fix, {}; no host DHCP server serves it, so only a DHCP \
                 server in another guest can send it partial checksums",
                port_of(bridge)
            ),
            Self::Unsupported { kind } => format!(
                "{kind} device: frames towards the guest bypass the egress hook, dhcpfix cannot \
                 serve it (docs/macvtap.md)"
            ),
            Self::Unknown => "its checksum offload could not be read (ETHTOOL_GFEATURES failed)".into(),
            Self::Rejecting {
                mode: Some(Mode::Audit),
                evidence,
            } => format!("{evidence}; dhcpfix is in audit mode: attach in fill mode"),
            Self::Rejecting { evidence, .. } => format!(
                "{evidence}; dhcpfix fills here, so the replies are rejected for another reason: see `dhcpfix leases` and `dhcpfix stats`"
            ),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Verdict {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Verdict", 3)?;
        s.serialize_field("verdict", self.name())?;
        s.serialize_field("level", &self.level())?;
        s.serialize_field("detail", &self.detail())?;
        s.end()
    }
}

/// The verdict for one tap. `offload` is `None` when it could not be read;
/// `fixes` are the other fixes that apply to it; `served_by` the host DHCP
/// servers serving it.
pub fn judge(
    tap: &Link,
    offload: Option<bool>,
    attachment: Option<&Attachment>,
    fixes: &[&OtherFix],
    bridge: Option<&str>,
    served_by: &[String],
) -> Verdict {
    if tap.is_rx_handler_tap() {
        return Verdict::Unsupported {
            kind: tap.kind.clone().unwrap_or_else(|| "macvtap".into()),
        };
    }
    if let Some(a) = attachment {
        match a.mode {
            Some(Mode::Fill) if a.ports.contains(&68) => return Verdict::Covered { method: a.method },
            Some(Mode::Audit) => return Verdict::Audit,
            _ => {}
        }
    }
    let Some(offload) = offload else {
        return Verdict::Unknown;
    };
    if !offload {
        return Verdict::NoOffload;
    }
    if let Some(f) = fixes.iter().find(|f| f.kind == OtherFixKind::IptablesChecksum) {
        return Verdict::CoveredByIptables {
            applies_to: f.applies_to.clone(),
        };
    }
    if let Some(f) = fixes.iter().find(|f| f.kind == OtherFixKind::TcCsum) {
        return Verdict::CoveredByTc {
            device: f.applies_to.clone(),
        };
    }
    let bridge = bridge.map(str::to_owned);
    if served_by.is_empty() {
        Verdict::Exposed { bridge }
    } else {
        Verdict::AtRisk {
            bridge,
            servers: served_by.to_vec(),
        }
    }
}

/// The verdict once the guests dhcpfix saw on the tap are known: a guest
/// throwing replies away outweighs what the settings suggest.
pub fn with_evidence(verdict: Verdict, guests: &[&Guest], host: Option<u64>) -> Verdict {
    let mode = match &verdict {
        Verdict::Covered { .. } => Some(Mode::Fill),
        Verdict::Audit => Some(Mode::Audit),
        _ => return verdict,
    };
    match guests.iter().find(|g| g.state == State::Rejecting) {
        Some(g) => Verdict::Rejecting {
            mode,
            evidence: leases::describe(g, host),
        },
        None => verdict,
    }
}

/// The checksum feature bits to test taps with: the classifier's own, from
/// BTF, when it resolves.
pub fn csum_mask(kernel: &KernelFacts) -> u64 {
    kernel
        .layout
        .as_ref()
        .map_or(kernel_layout::FALLBACK_CSUM_FEATURES, |l| l.csum_features)
}

/// Whether this kernel attaches through tcx links (Linux >= 6.6).
fn has_tcx(version: &KernelVersion) -> bool {
    *version >= KernelVersion::new(6, 6, 0)
}

/// BTF, the TC hook, privileges and the pin directory.
pub fn kernel_checks(kernel: &KernelFacts) -> Vec<Check> {
    let btf = match &kernel.layout {
        Ok(l) => Check::new(
            "kernel BTF",
            Level::Ok,
            format!(
                "{}: sk_buff.dev at byte {}, sk_buff.ip_summed at byte {} bit {}, \
                 net_device.features at byte {}",
                kernel.btf, l.skb_dev, l.skb_ip_summed, l.ip_summed_shift, l.dev_features
            ),
        ),
        Err(e) => Check::new("kernel BTF", Level::Action, e.to_string()),
    };
    let hook = match &kernel.version {
        Ok(v) if has_tcx(v) => Check::new("TC hook", Level::Ok, format!("tcx links (Linux {v})")),
        Ok(v) => Check::new(
            "TC hook",
            Level::Ok,
            format!("netlink clsact filters (Linux {v} has no tcx; needs sch_ingress)"),
        ),
        Err(e) => Check::new(
            "TC hook",
            Level::Warn,
            format!("kernel version unknown ({e}); attach tries tcx, then use --method netlink"),
        ),
    };
    // Attaching as `attach --method auto` would on this kernel.
    let attach = match &kernel.version {
        Ok(v) if has_tcx(v) => Operation::AttachTcx,
        _ => Operation::AttachNetlink,
    };
    let privileges = match kernel.caps.as_ref().map(|c| c.check(&[Operation::Load, attach])) {
        Ok(Ok(())) => Check::new("privileges", Level::Ok, "enough to load and attach dhcpfix"),
        Ok(Err(missing)) => Check::new("privileges", Level::Warn, missing.to_string()),
        Err(e) => Check::new("privileges", Level::Warn, e.to_string()),
    };
    vec![btf, hook, privileges, pin_dir_check(kernel)]
}

fn pin_dir_check(kernel: &KernelFacts) -> Check {
    let item = "pin directory";
    let pins = &kernel.pin_dir;
    let shown = pins.path.display();
    if let Some(reason) = &pins.refused {
        return Check::new(item, Level::Action, reason.clone());
    }
    if pins.on_bpffs {
        return Check::new(
            item,
            Level::Ok,
            format!(
                "{shown} is on a bpffs{}",
                if pins.loaded { "; dhcpfix is loaded" } else { "" }
            ),
        );
    }
    let can_mount = kernel
        .caps
        .as_ref()
        .is_ok_and(|c| c.missing(&[Operation::MountBpffs]).is_empty());
    if can_mount {
        Check::new(
            item,
            Level::Ok,
            format!("{shown} has no bpffs yet; attach creates and mounts it"),
        )
    } else {
        // mount(8) needs the directory to exist.
        let mkdir = if pins.exists {
            String::new()
        } else {
            format!("mkdir -p -m 0700 {shown} && ")
        };
        Check::new(
            item,
            Level::Action,
            format!(
                "{shown} has no bpffs and this user cannot mount one: run as root, or mount one \
                 there ({mkdir}mount -t bpf -o mode=0700 bpf {shown})"
            ),
        )
    }
}

/// The report's DHCP servers: each socket with the interfaces it serves:
/// the device it is bound to, else the interfaces with its address, else
/// (bound to every address, as dnsmasq and dhcpd without interfaces are)
/// every bridge with an IPv4 address.
pub fn dhcp_servers(sockets: Vec<ServerSocket>, links: &[Link]) -> Vec<DhcpServer> {
    let name_of = |index: u32| links.iter().find(|l| l.ifindex == index).map(|l| l.name.clone());
    sockets
        .into_iter()
        .map(|s| {
            let bound_device = s.bound_ifindex.and_then(name_of);
            let serves = if let Some(dev) = &bound_device {
                vec![dev.clone()]
            } else if !s.address.is_unspecified() {
                links
                    .iter()
                    .filter(|l| l.ipv4.contains(&s.address))
                    .map(|l| l.name.clone())
                    .collect()
            } else {
                links
                    .iter()
                    .filter(|l| l.is_bridge() && !l.ipv4.is_empty())
                    .map(|l| l.name.clone())
                    .collect()
            };
            DhcpServer {
                address: s.address,
                bound_device,
                processes: s.processes,
                serves,
                inode: s.inode,
            }
        })
        .collect()
}

/// The servers serving `tap` (a port of `bridge`), as the tap's report
/// names them.
pub fn served_by(servers: &[DhcpServer], tap: &str, bridge: Option<&str>) -> Vec<String> {
    servers
        .iter()
        .filter(|s| s.serves.iter().any(|i| Some(i.as_str()) == bridge || i == tap))
        .map(DhcpServer::who)
        .collect()
}

/// A pin whose interface is gone.
pub fn stale_attachment(a: &Attachment) -> Check {
    Check::new(
        format!("attachment {}", a.name),
        Level::Warn,
        format!(
            "pinned but its interface is gone; remove it with: dhcpfix detach {}",
            a.name
        ),
    )
}

/// dhcpfix and other fixes on one tap.
pub fn overlap(tap: &str, fixes: &[&OtherFix]) -> Check {
    let kinds: Vec<String> = fixes.iter().map(|f| f.kind.to_string()).collect();
    Check::new(
        format!("overlap on {tap}"),
        Level::Ok,
        format!(
            "dhcpfix and {} both cover it: harmless (the other fix completes the checksum \
             first, dhcpfix then counts it as valid); one of them is enough",
            kinds.join(" and ")
        ),
    )
}

/// The commands that fix what needs action.
pub fn actions(interfaces: &[TapReport]) -> Vec<String> {
    let at_risk: Vec<&str> = interfaces
        .iter()
        .filter(|t| {
            matches!(
                t.verdict,
                Verdict::AtRisk { .. }
                    | Verdict::Rejecting {
                        mode: Some(Mode::Audit),
                        ..
                    }
            )
        })
        .map(|t| t.name.as_str())
        .collect();
    if at_risk.is_empty() {
        Vec::new()
    } else {
        vec![format!("dhcpfix attach {}", at_risk.join(" "))]
    }
}

/// The worst level of all items.
pub fn overall(kernel: &[Check], notes: &[Check], interfaces: &[TapReport]) -> Level {
    kernel
        .iter()
        .chain(notes)
        .map(|c| c.level)
        .chain(interfaces.iter().map(|t| t.verdict.level()))
        .max()
        .unwrap_or(Level::Ok)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn tap() -> Link {
        Link {
            ifindex: 5,
            name: "vnet5".into(),
            kind: Some("tun".into()),
            ethernet: true,
            ..Default::default()
        }
    }

    #[test]
    fn verdicts() {
        let tap = tap();
        let server = ["dnsmasq[1]".to_owned()];
        let verdict = |link: &Link, offload, fixes: &[&OtherFix], served: &[String]| {
            judge(link, offload, None, fixes, Some("br0"), served)
        };
        let at_risk = verdict(&tap, Some(true), &[], &server);
        assert_eq!(
            at_risk,
            Verdict::AtRisk {
                bridge: Some("br0".into()),
                servers: server.to_vec()
            }
        );
        assert_eq!(at_risk.level(), Level::Action);
        assert_eq!(
            at_risk.detail(),
            "tx checksum offload on and no fix; port of br0, served by dnsmasq[1]"
        );
        let exposed = verdict(&tap, Some(true), &[], &[]);
        assert_eq!(exposed.name(), "exposed");
        assert_eq!(exposed.level(), Level::Warn);
        assert_eq!(verdict(&tap, Some(false), &[], &server), Verdict::NoOffload);
        assert_eq!(verdict(&tap, None, &[], &server), Verdict::Unknown);
        let tc = OtherFix {
            kind: OtherFixKind::TcCsum,
            applies_to: "br0".into(),
            rule: String::new(),
        };
        let by_tc = verdict(&tap, Some(true), &[&tc], &server);
        assert_eq!(by_tc, Verdict::CoveredByTc { device: "br0".into() });
        assert_eq!(by_tc.detail(), "tc csum action on br0");
        let iptables = OtherFix {
            kind: OtherFixKind::IptablesChecksum,
            applies_to: "br+".into(),
            rule: String::new(),
        };
        // iptables first, whatever the order.
        assert_eq!(
            verdict(&tap, Some(true), &[&tc, &iptables], &server).name(),
            "covered-by-iptables"
        );
        let macvtap = Link {
            kind: Some("macvtap".into()),
            ..tap.clone()
        };
        let unsupported = verdict(&macvtap, Some(true), &[], &server);
        assert_eq!(unsupported.name(), "unsupported");
        assert!(unsupported.detail().starts_with("macvtap device: "));
    }

    use crate::leases::example as guest;

    #[test]
    fn a_guest_throwing_replies_away_is_evidence() {
        let rejecting = guest(State::Rejecting);
        let bound = guest(State::Bound);
        let audit = with_evidence(Verdict::Audit, &[&bound, &rejecting], Some(1));
        assert_eq!((audit.name(), audit.level()), ("rejecting", Level::Action));
        assert!(
            audit.detail().starts_with(
                "vnet5 52:54:00:00:00:05: rejecting: the guest threw away 5 DHCP replies in 40 s"
            ),
            "{}",
            audit.detail()
        );
        assert!(
            audit.detail().ends_with("attach in fill mode"),
            "{}",
            audit.detail()
        );
        let covered = Verdict::Covered { method: Method::Tcx };
        assert_eq!(with_evidence(covered.clone(), &[&bound], Some(1)), covered);
        let still = with_evidence(covered, &[&rejecting], Some(1));
        assert!(still.detail().contains("another reason"), "{}", still.detail());
        // Without an attachment there is no evidence to weigh.
        let at_risk = Verdict::Exposed { bridge: None };
        assert_eq!(with_evidence(at_risk.clone(), &[&rejecting], Some(1)), at_risk);
    }

    #[test]
    fn attachments_decide_first() {
        let attachment = |mode, ports: Vec<u16>| Attachment {
            name: "vnet5".into(),
            ifindex: 5,
            netns: crate::netns::NetnsInfo {
                name: None,
                cookie: 1,
            },
            attached: true,
            mode: Some(mode),
            method: Method::Tcx,
            ports,
        };
        let judged = |a: &Attachment| judge(&tap(), Some(true), Some(a), &[], None, &[]);
        let covered = judged(&attachment(Mode::Fill, vec![68, 67]));
        assert_eq!(covered, Verdict::Covered { method: Method::Tcx });
        assert_eq!(covered.detail(), "dhcpfix attached (tcx, fill)");
        assert_eq!(judged(&attachment(Mode::Audit, vec![68])), Verdict::Audit);
        // Filling, but not the client port: judged as if not attached.
        assert_eq!(
            judged(&attachment(Mode::Fill, vec![67])),
            Verdict::Exposed { bridge: None }
        );
    }

    #[test]
    fn which_interfaces_a_server_serves() {
        let bridge = |ifindex, name: &str, ipv4: Vec<Ipv4Addr>| Link {
            ifindex,
            name: name.into(),
            kind: Some("bridge".into()),
            ipv4,
            ..Default::default()
        };
        let links = [
            bridge(2, "br0", vec![Ipv4Addr::new(10, 0, 0, 1)]),
            bridge(3, "br1", vec![Ipv4Addr::new(10, 1, 0, 1)]),
            bridge(4, "br2", vec![]),
        ];
        let socket = |address, bound_ifindex| ServerSocket {
            address,
            inode: 9,
            bound_ifindex,
            processes: vec![],
        };
        let serves = |s| dhcp_servers(vec![s], &links).remove(0).serves;
        assert_eq!(serves(socket(Ipv4Addr::UNSPECIFIED, Some(3))), ["br1"]);
        assert_eq!(serves(socket(Ipv4Addr::new(10, 0, 0, 1), None)), ["br0"]);
        assert_eq!(serves(socket(Ipv4Addr::UNSPECIFIED, None)), ["br0", "br1"]);
        let servers = dhcp_servers(vec![socket(Ipv4Addr::UNSPECIFIED, Some(2))], &links);
        assert_eq!(servers[0].bound_device.as_deref(), Some("br0"));
        assert_eq!(served_by(&servers, "vnet0", Some("br0")), ["UDP 0.0.0.0:67"]);
        assert!(served_by(&servers, "vnet0", Some("br1")).is_empty());
    }
}
