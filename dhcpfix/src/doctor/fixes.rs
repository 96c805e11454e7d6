//! The other checksum fixes a host may have, parsed from what the tools
//! print: iptables `CHECKSUM --checksum-fill` rules (`iptables-save`) and
//! tc `csum` actions (`tc filter show`), and which taps each covers.

use std::fmt;

use serde::Serialize;

/// What kind of fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum OtherFixKind {
    /// An iptables mangle `CHECKSUM --checksum-fill` rule.
    #[serde(rename = "iptables-checksum")]
    IptablesChecksum,
    /// A tc `csum` action.
    #[serde(rename = "tc-csum")]
    TcCsum,
}

impl fmt::Display for OtherFixKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::IptablesChecksum => "iptables-checksum",
            Self::TcCsum => "tc-csum",
        })
    }
}

/// Another checksum fix found on the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OtherFix {
    pub kind: OtherFixKind,
    /// Where it applies: an out-interface pattern (`virbr0`, `br+`,
    /// `!lan0`), a device, or "any".
    pub applies_to: String,
    pub rule: String,
}

/// The CHECKSUM --checksum-fill rules of an `iptables-save` dump that can
/// reach DHCP replies (UDP to port 68, or no port restriction).
pub fn parse_iptables_checksum(dump: &str) -> Vec<OtherFix> {
    let mut table = "";
    let mut out = Vec::new();
    for line in dump.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
            continue;
        }
        if table != "mangle" || !line.starts_with("-A ") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let has = |w: &str| words.contains(&w);
        if !(has("CHECKSUM") && has("--checksum-fill")) {
            continue;
        }
        let value_of = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1).map(|v| (*v, i > 0 && words[i - 1] == "!")))
        };
        let proto_ok = match value_of("-p") {
            Some((p, negated)) => (p == "udp" || p == "17") != negated,
            None => true,
        };
        let port_ok = match value_of("--dport") {
            Some((p, negated)) => port_matches(p, 68) != negated,
            None => true,
        };
        if !(proto_ok && port_ok) {
            continue;
        }
        let applies_to = match value_of("-o") {
            Some((iface, true)) => format!("!{iface}"),
            Some((iface, false)) => iface.to_owned(),
            None => "any".to_owned(),
        };
        out.push(OtherFix {
            kind: OtherFixKind::IptablesChecksum,
            applies_to,
            rule: line.to_owned(),
        });
    }
    out
}

/// The tc `csum` action in the output of `tc filter show dev DEV [egress]`,
/// if there is one.
pub fn parse_tc_csum(dev: &str, filters: &str) -> Option<OtherFix> {
    let line = filters.lines().find(|l| l.contains(": csum ("))?;
    Some(OtherFix {
        kind: OtherFixKind::TcCsum,
        applies_to: dev.to_owned(),
        rule: format!("tc filter on {dev}: {}", line.trim()),
    })
}

fn port_matches(spec: &str, port: u16) -> bool {
    match spec.split_once(':') {
        Some((lo, hi)) => {
            let lo = lo.parse().unwrap_or(0);
            let hi = hi.parse().unwrap_or(u16::MAX);
            (lo..=hi).contains(&port)
        }
        None => spec.parse() == Ok(port),
    }
}

/// Whether an iptables interface pattern (`virbr0`, `virbr+`) matches.
fn iface_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether `fix` covers DHCP replies towards `tap`. An iptables rule sees
/// host-originated packets leaving through the bridge (`-o <bridge>`); a tc
/// csum action works on the device it is attached to.
pub fn fix_applies(fix: &OtherFix, tap: &str, bridge: Option<&str>) -> bool {
    let names = [Some(tap), bridge];
    let matches = |p: &str| names.iter().flatten().any(|n| iface_matches(p, n));
    match fix.applies_to.as_str() {
        "any" => true,
        negated if negated.starts_with('!') => !matches(&negated[1..]),
        pattern => matches(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules() {
        let dump =
            "*filter\n-A FORWARD -j CHECKSUM --checksum-fill\nCOMMIT\n*mangle\n:POSTROUTING ACCEPT [0:0]\n\
            -A LIBVIRT_PRT -o virbr0 -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill\n\
            -A POSTROUTING -p tcp -j CHECKSUM --checksum-fill\n\
            -A POSTROUTING -p udp --dport 53 -j CHECKSUM --checksum-fill\n\
            -A POSTROUTING -o br+ -p udp -m udp --dport 67:68 -j CHECKSUM --checksum-fill\n\
            -A POSTROUTING ! -o lan0 -j CHECKSUM --checksum-fill\nCOMMIT\n";
        let fixes = parse_iptables_checksum(dump);
        let targets: Vec<&str> = fixes.iter().map(|f| f.applies_to.as_str()).collect();
        assert_eq!(targets, ["virbr0", "br+", "!lan0"]);
        assert!(fixes.iter().all(|f| f.kind == OtherFixKind::IptablesChecksum));
        assert!(fix_applies(&fixes[0], "vnet0", Some("virbr0")));
        assert!(!fix_applies(&fixes[0], "vnet0", Some("br0")));
        assert!(fix_applies(&fixes[1], "vnet0", Some("br0")));
        assert!(!fix_applies(&fixes[1], "vnet0", None));
        assert!(fix_applies(&fixes[2], "vnet0", Some("br0")));
        assert!(!fix_applies(&fixes[2], "vnet0", Some("lan0")));
        // Nothing to find, nothing to panic about.
        let odd = parse_iptables_checksum("*mangle\n-A\n-A X -j CHECKSUM --checksum-fill -o\n");
        assert_eq!(odd.len(), 1);
        assert_eq!(odd[0].applies_to, "any");
        assert!(parse_iptables_checksum("").is_empty());
    }

    #[test]
    fn tc_csum_actions() {
        let shown = "filter parent ffff: protocol all pref 49152 matchall chain 0 \n\
            filter parent ffff: protocol all pref 49152 matchall chain 0 handle 0x1 \n  not_in_hw\n\
            \taction order 1: csum (udp) action pass\n\tindex 1 ref 1 bind 1\n";
        let fix = parse_tc_csum("vnet5", shown).unwrap();
        assert_eq!(fix.kind, OtherFixKind::TcCsum);
        assert_eq!(fix.applies_to, "vnet5");
        assert_eq!(
            fix.rule,
            "tc filter on vnet5: action order 1: csum (udp) action pass"
        );
        assert!(fix_applies(&fix, "vnet5", Some("br0")));
        assert!(!fix_applies(&fix, "vnet6", Some("br0")));
        assert_eq!(
            parse_tc_csum("vnet5", "filter parent ffff: bpf dhcpfix direct-action\n"),
            None
        );
    }

    #[test]
    fn kinds_as_in_the_report() {
        assert_eq!(
            serde_json::to_string(&[OtherFixKind::IptablesChecksum, OtherFixKind::TcCsum]).unwrap(),
            r#"["iptables-checksum","tc-csum"]"#
        );
        assert_eq!(OtherFixKind::TcCsum.to_string(), "tc-csum");
    }
}
