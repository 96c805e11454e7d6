//! libvirt's domain XML (formatdomain): which `<devices><interface>`s have
//! a host tap dhcpfix can attach to, and why the others are left out.
//!
//! The XML comes from the hook's stdin and is treated as hostile: a real
//! parser with DTDs refused and a node limit, names checked with
//! [`crate::attach::valid_ifname`] before anything uses them.

use std::fmt;

/// Largest domain XML the hook reads; a real one is a few KiB.
pub const MAX_XML_BYTES: usize = 16 << 20;
/// Most XML nodes parsed (a domain has hundreds).
const MAX_NODES: u32 = 1_000_000;
/// Most `<interface>`s looked at; the rest are counted and left alone. A
/// QEMU guest has at most a few hundred NICs; a hostile document must not
/// make the hook (which a guest's start waits for) work for minutes.
pub const MAX_DOMAIN_INTERFACES: usize = 1024;

/// Errors in the domain XML.
#[derive(Debug, thiserror::Error)]
pub enum DomainXmlError {
    #[error("domain XML is empty")]
    Empty,
    #[error("domain XML is not UTF-8")]
    NotUtf8,
    #[error("domain XML does not parse: {0}")]
    Parse(#[from] roxmltree::Error),
    #[error("not a libvirt domain XML: no <domain> element (root is <{0}>)")]
    NotDomain(String),
}

/// What to do with one `<interface>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Its host tap is this device.
    Tap(String),
    /// Left out: it has no host tap (hostdev, vhostuser, no target yet).
    Skip(String),
    /// Left out although the guest may need the fix: macvtap, a bad or
    /// repeated device name. Worth a warning.
    Refuse(String),
}

/// One `<devices><interface>` of the domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// 0-based position among the domain's interfaces.
    pub position: usize,
    /// The `type` attribute ("network", "bridge", "direct", ...).
    pub kind: String,
    /// `<target dev=.../>`, as written (possibly invalid).
    pub target: Option<String>,
    /// `<mac address=.../>`, lower case.
    pub mac: Option<String>,
    pub plan: Plan,
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interface #{} (type={:?}", self.position, self.kind)?;
        if let Some(t) = &self.target {
            write!(f, ", target {t:?}")?;
        }
        f.write_str(")")
    }
}

/// The parts of a domain the hook needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// `<name>`.
    pub name: Option<String>,
    pub interfaces: Vec<Interface>,
    /// `<interface>`s beyond [`MAX_DOMAIN_INTERFACES`], not looked at.
    pub ignored: usize,
}

impl Domain {
    /// The taps to act on, in document order, each once.
    pub fn taps(&self) -> impl Iterator<Item = &Interface> {
        self.interfaces.iter().filter(|i| matches!(i.plan, Plan::Tap(_)))
    }
}

/// Interface types backed by a host tap libvirt names in `<target dev>`.
const TAP_TYPES: [&str; 3] = ["network", "bridge", "ethernet"];

fn skip_reason(kind: &str) -> String {
    match kind {
        "direct" => "type='direct' is a macvtap device: frames towards the guest do not pass its \
                     egress hook, so dhcpfix cannot fix them there (docs/macvtap.md)"
            .into(),
        "hostdev" => "type='hostdev' hands a host PCI/USB network device (e.g. an SR-IOV VF) to \
                      the guest: there is no host tap"
            .into(),
        "vhostuser" => "type='vhostuser': frames go through a vhost-user backend (e.g. OVS-DPDK), \
                        not a host tap"
            .into(),
        "user" => "type='user' (SLIRP/passt) is userspace networking: there is no host tap".into(),
        "vdpa" => "type='vdpa' is a vDPA device: there is no host tap".into(),
        other => format!("type={other:?} has no host tap dhcpfix knows how to serve"),
    }
}

/// The child elements of `node` named `name`.
fn child<'a, 'input: 'a>(
    node: roxmltree::Node<'a, 'input>,
    name: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'input>> {
    node.children()
        .filter(move |n| n.is_element() && n.has_tag_name(name))
}

/// Parses a domain XML (or libvirt status XML wrapping one).
pub fn parse_domain(bytes: &[u8]) -> Result<Domain, DomainXmlError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DomainXmlError::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DomainXmlError::NotUtf8)?;
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, opts)?;
    let root = doc.root_element();
    let domain = if root.has_tag_name("domain") {
        root
    } else {
        root.children()
            .find(|n| n.has_tag_name("domain"))
            .ok_or_else(|| DomainXmlError::NotDomain(root.tag_name().name().to_owned()))?
    };
    let name = child(domain, "name")
        .next()
        .and_then(|n| n.text())
        .map(|t| t.trim().to_owned());

    let mut interfaces = Vec::new();
    let mut ignored = 0;
    let mut seen = std::collections::HashSet::<String>::new();
    for (position, iface) in child(domain, "devices")
        .flat_map(|d| child(d, "interface"))
        .enumerate()
    {
        if position >= MAX_DOMAIN_INTERFACES {
            ignored += 1;
            continue;
        }
        let kind = iface.attribute("type").unwrap_or("").to_owned();
        let target = child(iface, "target")
            .next()
            .and_then(|t| t.attribute("dev"))
            .map(str::to_owned);
        let mac = child(iface, "mac")
            .next()
            .and_then(|m| m.attribute("address"))
            .map(str::to_ascii_lowercase);
        let plan = if kind == "direct" {
            Plan::Refuse(skip_reason(&kind))
        } else if !TAP_TYPES.contains(&kind.as_str()) {
            Plan::Skip(skip_reason(&kind))
        } else {
            match &target {
                None => {
                    Plan::Skip("no <target dev=.../> (libvirt names the tap when the guest starts)".into())
                }
                Some(dev) if !crate::attach::valid_ifname(dev) => {
                    Plan::Refuse(format!("target dev {dev:?} is not a valid interface name"))
                }
                Some(dev) if !seen.insert(dev.clone()) => {
                    Plan::Refuse(format!("target dev {dev:?} appears twice"))
                }
                Some(dev) => Plan::Tap(dev.clone()),
            }
        };
        interfaces.push(Interface {
            position,
            kind,
            target,
            mac,
            plan,
        });
    }
    Ok(Domain {
        name,
        interfaces,
        ignored,
    })
}

/// Whether a tap's MAC belongs to the guest NIC with MAC `guest`. libvirt
/// gives the host tap the guest's MAC with the first byte set to 0xfe
/// (so the bridge does not take it over), hence the last five bytes decide.
pub fn tap_mac_matches(tap: &[u8], guest: &str) -> bool {
    let parsed: Vec<u8> = guest
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    parsed.len() == 6 && tap.len() == 6 && parsed[1..] == tap[1..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_and_reasons() {
        let xml = br#"<domain type='kvm'><name>web</name><devices>
            <interface type='network'><mac address='52:54:00:AA:BB:CC'/><source network='default'/><target dev='vnet3'/></interface>
            <interface type='direct'><source dev='eth0' mode='bridge'/><target dev='macvtap0'/></interface>
            <interface type='bridge'><source bridge='br0'/></interface>
            <interface type='bridge'><target dev='a b'/></interface>
            <interface type='ethernet'><target dev='vnet3'/></interface>
        </devices></domain>"#;
        let d = parse_domain(xml).unwrap();
        assert_eq!(d.name.as_deref(), Some("web"));
        assert_eq!(d.interfaces.len(), 5);
        assert_eq!(d.interfaces[0].plan, Plan::Tap("vnet3".into()));
        assert_eq!(d.interfaces[0].mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        assert!(matches!(&d.interfaces[1].plan, Plan::Refuse(r) if r.contains("macvtap")));
        assert!(matches!(&d.interfaces[2].plan, Plan::Skip(r) if r.contains("no <target")));
        assert!(matches!(&d.interfaces[3].plan, Plan::Refuse(r) if r.contains("not a valid")));
        assert!(matches!(&d.interfaces[4].plan, Plan::Refuse(r) if r.contains("twice")));
        assert_eq!(d.taps().count(), 1);
    }

    #[test]
    fn refuses_dtd_and_garbage() {
        let bomb = br#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><domain>&b;</domain>"#;
        assert!(matches!(parse_domain(bomb), Err(DomainXmlError::Parse(_))));
        assert!(matches!(
            parse_domain(b"<domain><devices>"),
            Err(DomainXmlError::Parse(_))
        ));
        assert!(matches!(parse_domain(b"  \n"), Err(DomainXmlError::Empty)));
        assert!(matches!(
            parse_domain(b"<network/>"),
            Err(DomainXmlError::NotDomain(_))
        ));
        assert!(matches!(
            parse_domain(&[0xff, 0xfe]),
            Err(DomainXmlError::NotUtf8)
        ));
    }

    #[test]
    fn status_xml_wraps_the_domain() {
        let xml = b"<domstatus state='running'><domain><devices><interface type='bridge'><target dev='vnet0'/></interface></devices></domain></domstatus>";
        assert_eq!(parse_domain(xml).unwrap().taps().count(), 1);
    }

    /// Found by a review: the duplicate check was a linear search, so 270k
    /// interfaces (a 16 MiB document) took 234 s while libvirt waited.
    #[test]
    fn huge_documents_stay_fast_and_bounded() {
        let mut xml = String::from("<domain><devices>");
        for i in 0..270_000 {
            xml.push_str(&format!(
                "<interface type='bridge'><target dev='v{i}'/></interface>"
            ));
        }
        xml.push_str("</devices></domain>");
        let start = std::time::Instant::now();
        let d = parse_domain(xml.as_bytes()).unwrap();
        let took = start.elapsed();
        assert_eq!(d.interfaces.len(), MAX_DOMAIN_INTERFACES);
        assert_eq!(d.ignored, 270_000 - MAX_DOMAIN_INTERFACES);
        assert_eq!(d.taps().count(), MAX_DOMAIN_INTERFACES);
        assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn tap_mac() {
        let tap = [0xfe, 0x54, 0, 0xaa, 0xbb, 0xcc];
        assert!(tap_mac_matches(&tap, "52:54:00:aa:bb:cc"));
        assert!(!tap_mac_matches(&tap, "52:54:00:aa:bb:cd"));
        assert!(!tap_mac_matches(&tap, "junk"));
    }
}
