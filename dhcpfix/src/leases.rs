//! Each guest's DHCP conversation as the classifier saw it from both sides
//! of its tap (`DHCPFIX_GUESTS`), read into what an operator asks: which
//! state is it in, which address, how long is left, is it throwing replies
//! away, which client does it run.
//!
//! The classifier keeps times in `CLOCK_BOOTTIME` nanoseconds; they are read
//! against the same clock here, so a suspended host does not make leases
//! look younger than they are.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use dhcpfix_common::{
    dhcp::{self, Role, FAMILY_V6},
    guest::{GuestState, State},
    key::IfaceKey,
};
use serde::{Serialize, Serializer};

use crate::{
    attach::{self, AttachError, Attachment},
    netdev::format_mac,
    netns::{Netns, NetnsInfo},
    pins::{maps::Maps, PinDir},
};

/// One guest (one MAC on one interface, per IP family).
#[derive(Clone, Debug, Serialize)]
pub struct Guest {
    pub interface: String,
    pub ifindex: u32,
    pub netns: NetnsInfo,
    /// 4 or 6.
    pub family: u8,
    #[serde(serialize_with = "mac_text")]
    pub mac: [u8; 6],
    #[serde(serialize_with = "state_name")]
    pub state: State,
    /// The address the guest holds or was last offered.
    pub ip: Option<IpAddr>,
    /// The lease the server gave in its last ACK (DHCPv6: the IA
    /// Address's valid lifetime), and its T1 and T2, seconds.
    pub lease_s: Option<u64>,
    pub t1_s: Option<u64>,
    pub t2_s: Option<u64>,
    /// Seconds left on the lease (negative once it ran out); `None` without
    /// a lease or with an infinite one.
    pub lease_remaining_s: Option<i64>,
    /// Seconds since the last ACK reached the guest, since its last
    /// request, since the last reply reached it.
    pub last_ack_s_ago: Option<u64>,
    pub last_request_s_ago: Option<u64>,
    pub last_reply_s_ago: Option<u64>,
    /// Requests since the last ACK.
    pub requests_since_ack: u32,
    /// Requests of the current transaction sent after a reply for it
    /// reached the guest: replies its client threw away.
    pub requests_after_reply: u32,
    /// All such requests since dhcpfix first saw the guest.
    pub rejected_replies: u32,
    /// The current transaction id, and how long it has been going (from
    /// its first request to its last).
    pub xid: u32,
    pub transaction_s: Option<u64>,
    /// The last request's and the last reply's message types.
    pub last_request: &'static str,
    pub last_reply: &'static str,
    /// Host name (option 12; DHCPv6 FQDN) and vendor class (option 60;
    /// DHCPv6 vendor class), as the guest sent them: which client and OS.
    pub hostname: Option<String>,
    pub vendor_class: Option<String>,
}

fn mac_text<S: Serializer>(mac: &[u8; 6], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_mac(mac))
}

fn state_name<S: Serializer>(state: &State, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.name())
}

/// Now on the classifier's clock (`bpf_ktime_get_boot_ns`).
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Printable text of an option as sent (control bytes replaced).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A message role's name in the family's own words (`SOLICIT` for v6).
fn role_name(role: u8, family: u8) -> &'static str {
    let v6 = family == FAMILY_V6;
    match (Role::from_raw(role), v6) {
        (Role::Discover, false) => "DISCOVER",
        (Role::Discover, true) => "SOLICIT",
        (Role::Offer, false) => "OFFER",
        (Role::Offer, true) => "ADVERTISE",
        (Role::Request, _) => "REQUEST",
        (Role::Decline, _) => "DECLINE",
        (Role::Ack, false) => "ACK",
        (Role::Ack, true) => "REPLY",
        (Role::Nak, _) => "NAK",
        (Role::Release, _) => "RELEASE",
        (Role::Inform, false) => "INFORM",
        (Role::Inform, true) => "INFORMATION-REQUEST",
        (Role::Other, _) => "",
    }
}

impl Guest {
    /// The guest behind `state`, seen on `attachment`'s interface at `now`.
    pub fn read(attachment: &Attachment, state: &GuestState, now: u64) -> Self {
        let ago = |t: u64| (t != 0).then(|| now.saturating_sub(t) / 1_000_000_000);
        let reply = state.reply();
        let request = state.request();
        let has_lease = state.last_ack != 0 && reply.lease.is_some();
        let (lease, t1, t2) = state.times();
        let ip = state.address().map(|a| {
            if state.family == FAMILY_V6 {
                IpAddr::V6(Ipv6Addr::from(a))
            } else {
                IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
            }
        });
        let hostname = request.hostname.map(|h| {
            if state.family == FAMILY_V6 {
                match dhcp::wire_name(h) {
                    Some((buf, n)) => text(&buf[..n]),
                    None => text(h),
                }
            } else {
                text(h)
            }
        });
        Self {
            interface: attachment.name.clone(),
            ifindex: attachment.ifindex,
            netns: attachment.netns.clone(),
            family: state.family,
            mac: state.mac,
            state: state.state(now),
            ip,
            lease_s: has_lease.then_some(lease),
            t1_s: has_lease.then_some(t1),
            t2_s: has_lease.then_some(t2),
            lease_remaining_s: state.remaining(now),
            last_ack_s_ago: ago(state.last_ack),
            last_request_s_ago: ago(state.last_request),
            last_reply_s_ago: ago(state.last_reply),
            requests_since_ack: state.requests,
            requests_after_reply: state.repeats,
            rejected_replies: state.rejected,
            xid: state.xid,
            transaction_s: (state.xid_start != 0)
                .then(|| state.last_request.saturating_sub(state.xid_start) / 1_000_000_000),
            last_request: role_name(state.request_role, state.family),
            last_reply: role_name(state.reply_role, state.family),
            hostname,
            vendor_class: request.vendor.map(text),
        }
    }

    /// `vnet3 52:54:00:ab:cd:ef` (with the namespace when not the host's).
    pub fn who(&self, host: Option<u64>) -> String {
        let ns = self.netns.label(host);
        if ns == "host" {
            format!("{} {}", self.interface, format_mac(&self.mac))
        } else {
            format!("{} (netns {ns}) {}", self.interface, format_mac(&self.mac))
        }
    }
}

/// Every guest on the attachments of `pins` in `namespaces` (or on those
/// named in `only`), sorted by namespace, interface, family and MAC.
pub fn collect(pins: &PinDir, namespaces: &[Netns], only: &[String]) -> Result<Vec<Guest>, AttachError> {
    let attachments = attach::list_named(pins, namespaces, only)?;
    if attachments.is_empty() {
        return Ok(Vec::new());
    }
    Ok(of(&Maps::open(pins)?, &attachments, boottime_ns()))
}

/// The guests of the live `attachments` at `now`, sorted by namespace,
/// interface, family and MAC.
pub fn of(maps: &Maps, attachments: &[Attachment], now: u64) -> Vec<Guest> {
    let by_key: HashMap<IfaceKey, &Attachment> = attachments
        .iter()
        .filter(|a| a.attached)
        .map(|a| (a.key(), a))
        .collect();
    if by_key.is_empty() {
        return Vec::new();
    }
    let mut guests: Vec<Guest> = maps
        .all_guests()
        .into_iter()
        .filter_map(|(key, state)| {
            let attachment = by_key.get(&IfaceKey::new(key.netns, key.ifindex))?;
            Some(Guest::read(attachment, &state, now))
        })
        .collect();
    guests.sort_by(|a, b| {
        (a.netns.cookie, &a.interface, a.family, a.mac).cmp(&(b.netns.cookie, &b.interface, b.family, b.mac))
    });
    guests
}

/// A guest's state changes an operator must hear about, as the agent logs
/// them: entering `rejecting`, `rebinding` or `expired`.
pub fn alarming(state: State) -> bool {
    matches!(state, State::Rejecting | State::Rebinding | State::Expired)
}

/// One line about `guest` for the log or `doctor`: who, the state, and
/// the evidence for it.
pub fn describe(guest: &Guest, host: Option<u64>) -> String {
    let who = guest.who(host);
    let ip = guest.ip.map_or(String::new(), |ip| format!(" ({ip})"));
    let state = guest.state.name();
    match guest.state {
        State::Rejecting => format!(
            "{who}: {state}: the guest threw away {} DHCP repl{} in {} s (transaction {:#x}) and keeps asking: its DHCP client sees bad checksums",
            guest.requests_after_reply,
            if guest.requests_after_reply == 1 { "y" } else { "ies" },
            guest.transaction_s.unwrap_or(0),
            guest.xid,
        ),
        State::Renewing | State::Rebinding => format!(
            "{who}{ip}: {state}: no ACK since {} s ago, {} s of lease left",
            guest.last_ack_s_ago.unwrap_or(0),
            guest.lease_remaining_s.unwrap_or(0)
        ),
        State::Expired => format!(
            "{who}{ip}: {state}: the lease ran out {} s ago with no new ACK: the guest has lost its address",
            -guest.lease_remaining_s.unwrap_or(0)
        ),
        State::Bound => format!(
            "{who}{ip}: {state}: ACK {} s ago, {} of lease left",
            guest.last_ack_s_ago.unwrap_or(0),
            guest.lease_remaining_s.map_or("infinite".to_owned(), |s| format!("{s} s"))
        ),
        _ => format!("{who}{ip}: {state}"),
    }
}

/// A rejecting-looking guest on `vnet5` (host namespace, cookie 1) in
/// `state`, for the tests of what reads guests.
#[cfg(test)]
pub(crate) fn example(state: State) -> Guest {
    Guest {
        interface: "vnet5".into(),
        ifindex: 5,
        netns: NetnsInfo {
            name: None,
            cookie: 1,
        },
        family: 4,
        mac: [0x52, 0x54, 0, 0, 0, 5],
        state,
        ip: None,
        lease_s: None,
        t1_s: None,
        t2_s: None,
        lease_remaining_s: None,
        last_ack_s_ago: None,
        last_request_s_ago: Some(1),
        last_reply_s_ago: Some(2),
        requests_since_ack: 6,
        requests_after_reply: 5,
        rejected_replies: 5,
        xid: 0xabc,
        transaction_s: Some(40),
        last_request: "DISCOVER",
        last_reply: "OFFER",
        hostname: None,
        vendor_class: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcpfix_common::dhcp::{Message, FAMILY_V4};

    fn attachment() -> Attachment {
        Attachment {
            name: "vnet3".into(),
            ifindex: 12,
            netns: NetnsInfo {
                name: None,
                cookie: 1,
            },
            attached: true,
            mode: None,
            method: crate::attach::Method::Tcx,
            ports: vec![68, 67],
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_bound_v4_guest_reads_as_an_operator_wants_it() {
        let mut g = GuestState::default();
        let m = |role, xid| Message {
            family: FAMILY_V4,
            role,
            xid,
            client: [0x52, 0x54, 0, 0xab, 0xcd, 0xef],
            addr: [10, 0, 0, 5],
            ..Default::default()
        };
        g.on_request(10 * S, &m(Role::Request, 0x1234));
        let req = [
            53, 1, 3, 12, 3, b'v', b'm', b'1', 60, 4, b'u', b'd', b'h', b'c', 255,
        ];
        g.request_options[..req.len()].copy_from_slice(&req);
        g.request_options_len = req.len() as u8;
        let ack = [53, 1, 5, 51, 4, 0, 0, 0x0e, 0x10, 255];
        g.reply_options[..ack.len()].copy_from_slice(&ack);
        g.reply_options_len = ack.len() as u8;
        g.on_reply(11 * S, &m(Role::Ack, 0x1234));
        let guest = Guest::read(&attachment(), &g, 111 * S);
        assert_eq!(guest.state, State::Bound);
        assert_eq!(guest.ip, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(
            (guest.lease_s, guest.t1_s, guest.t2_s),
            (Some(3600), Some(1800), Some(3150))
        );
        assert_eq!(guest.lease_remaining_s, Some(3500));
        assert_eq!(guest.last_ack_s_ago, Some(100));
        assert_eq!((guest.last_request, guest.last_reply), ("REQUEST", "ACK"));
        assert_eq!(guest.hostname.as_deref(), Some("vm1"));
        assert_eq!(guest.vendor_class.as_deref(), Some("udhc"));
        let json = serde_json::to_value(&guest).unwrap();
        assert_eq!(json["mac"], "52:54:00:ab:cd:ef");
        assert_eq!(json["state"], "bound");
        assert_eq!(json["lease_remaining_s"], 3500);
        assert_eq!(json["requests_after_reply"], 0);
        assert_eq!(json["netns"]["cookie"], 1);
    }
}
