//! Reading DHCP (RFC 2131/2132) and DHCPv6 (RFC 8415) messages: the fields
//! the classifier keeps per guest. Generic over [`Frame`], so the code that
//! runs in the kernel is tested on the host; every read is bounded, and a
//! field that cannot be read stays zero (an observation is information,
//! never a reason to touch the packet).

use crate::frame::Frame;

/// IP family of a message.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// DHCPv4 `op`: from a client, from a server.
pub const BOOTREQUEST: u8 = 1;
pub const BOOTREPLY: u8 = 2;

/// Offsets inside the DHCPv4 message (the UDP payload), RFC 2131.
pub const DHCP_OP_OFFSET: u32 = 0;
pub const DHCP_XID_OFFSET: u32 = 4;
pub const DHCP_YIADDR_OFFSET: u32 = 16;
pub const DHCP_CHADDR_OFFSET: u32 = 28;
pub const DHCP_COOKIE_OFFSET: u32 = 236;
pub const DHCP_OPTIONS_OFFSET: u32 = 240;
/// The magic cookie that starts the options (99.130.83.99).
pub const DHCP_MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// DHCPv4 options read (RFC 2132).
pub const OPT_PAD: u8 = 0;
pub const OPT_HOSTNAME: u8 = 12;
pub const OPT_REQUESTED_IP: u8 = 50;
pub const OPT_LEASE_TIME: u8 = 51;
pub const OPT_MESSAGE_TYPE: u8 = 53;
pub const OPT_RENEWAL_TIME: u8 = 58;
pub const OPT_REBINDING_TIME: u8 = 59;
pub const OPT_VENDOR_CLASS: u8 = 60;
pub const OPT_END: u8 = 255;

/// DHCPv6 options read (RFC 8415): IA_NA and its IA Address.
pub const OPT6_IA_NA: u16 = 3;
pub const OPT6_IAADDR: u16 = 5;
pub const OPT6_FQDN: u16 = 39;
pub const OPT6_VENDOR_CLASS: u16 = 16;

/// Options looked at before giving up. Clients and servers put the ones read
/// here early; the bound keeps the verifier's work and the cost small.
pub const MAX_OPTIONS: u32 = 16;
/// Longest host name / vendor class kept.
pub const TEXT_LEN: usize = 32;

/// DHCPv4 message types (option 53).
pub const DHCPDISCOVER: u8 = 1;
pub const DHCPOFFER: u8 = 2;
pub const DHCPREQUEST: u8 = 3;
pub const DHCPDECLINE: u8 = 4;
pub const DHCPACK: u8 = 5;
pub const DHCPNAK: u8 = 6;
pub const DHCPRELEASE: u8 = 7;
pub const DHCPINFORM: u8 = 8;

/// DHCPv6 message types.
pub const SOLICIT: u8 = 1;
pub const ADVERTISE: u8 = 2;
pub const REQUEST: u8 = 3;
pub const CONFIRM: u8 = 4;
pub const RENEW: u8 = 5;
pub const REBIND: u8 = 6;
pub const REPLY: u8 = 7;
pub const RELEASE: u8 = 8;
pub const DECLINE: u8 = 9;
pub const INFORMATION_REQUEST: u8 = 11;

/// What a message is for, the same for both families.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Not a message this classifier follows.
    #[default]
    Other = 0,
    /// DISCOVER, SOLICIT: looking for a server.
    Discover = 1,
    /// OFFER, ADVERTISE.
    Offer = 2,
    /// REQUEST (also renewing and rebinding), v6 REQUEST/RENEW/REBIND/CONFIRM.
    Request = 3,
    /// DECLINE: the address is in use.
    Decline = 4,
    /// ACK, v6 REPLY with an address.
    Ack = 5,
    /// NAK, v6 REPLY without one.
    Nak = 6,
    /// RELEASE.
    Release = 7,
    /// INFORM, INFORMATION-REQUEST.
    Inform = 8,
}

impl Role {
    /// From a stored byte.
    pub fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => Self::Other,
        }
    }

    /// Whether a client sends it.
    pub fn from_client(self) -> bool {
        matches!(
            self,
            Self::Discover | Self::Request | Self::Decline | Self::Release | Self::Inform
        )
    }

    /// Whether `self`, a server's reply, answers the client's `request`:
    /// a client that sends `request` again with the same transaction id
    /// after such a reply reached it has thrown the reply away.
    pub fn answers(self, request: Role) -> bool {
        matches!(
            (self, request),
            (Self::Offer, Self::Discover) | (Self::Ack | Self::Nak, Self::Request)
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Other => "other",
            Self::Discover => "discover",
            Self::Offer => "offer",
            Self::Request => "request",
            Self::Decline => "decline",
            Self::Ack => "ack",
            Self::Nak => "nak",
            Self::Release => "release",
            Self::Inform => "inform",
        }
    }
}

/// The role of a DHCPv4 message type.
pub fn role_v4(msg_type: u8) -> Role {
    match msg_type {
        DHCPDISCOVER => Role::Discover,
        DHCPOFFER => Role::Offer,
        DHCPREQUEST => Role::Request,
        DHCPDECLINE => Role::Decline,
        DHCPACK => Role::Ack,
        DHCPNAK => Role::Nak,
        DHCPRELEASE => Role::Release,
        DHCPINFORM => Role::Inform,
        _ => Role::Other,
    }
}

/// The role of a DHCPv6 message type; a REPLY is an ACK when it carries an
/// address with a lifetime, else a NAK-like "no".
pub fn role_v6(msg_type: u8, has_address: bool) -> Role {
    match msg_type {
        SOLICIT => Role::Discover,
        ADVERTISE => Role::Offer,
        REQUEST | CONFIRM | RENEW | REBIND => Role::Request,
        REPLY if has_address => Role::Ack,
        REPLY => Role::Nak,
        RELEASE => Role::Release,
        DECLINE => Role::Decline,
        INFORMATION_REQUEST => Role::Inform,
        _ => Role::Other,
    }
}

/// What one message says (the fixed-size part).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub family: u8,
    pub msg_type: u8,
    pub role: Role,
    pub xid: u32,
    /// The guest's MAC: `chaddr` (v4) or the frame's address (v6).
    pub client: [u8; 6],
    /// The address offered or acknowledged (v4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Lease (v4 option 51; v6 IAADDR valid lifetime), renewal and
    /// rebinding times, seconds; 0 when absent.
    pub lease: u32,
    pub t1: u32,
    pub t2: u32,
    /// Where the host name and vendor class options start (their length
    /// byte for v4, their 2-byte length for v6); 0 when absent.
    pub hostname_at: u32,
    pub vendor_at: u32,
}

fn u32_at<F: Frame + ?Sized>(frame: &F, at: u32) -> u32 {
    frame.load::<4>(at).map_or(0, u32::from_be_bytes)
}

/// Reads a DHCPv4 message whose UDP payload runs from `dhcp` to `end`.
/// `None` when it is not one (no magic cookie, cut short).
#[inline(always)]
pub fn read_v4<F: Frame + ?Sized>(frame: &F, dhcp: u32, end: u32) -> Option<Message> {
    if dhcp + DHCP_OPTIONS_OFFSET > end
        || frame.load::<4>(dhcp + DHCP_COOKIE_OFFSET) != Some(DHCP_MAGIC_COOKIE)
    {
        return None;
    }
    let [op] = frame.load::<1>(dhcp + DHCP_OP_OFFSET)?;
    let mut m = Message {
        family: FAMILY_V4,
        xid: u32_at(frame, dhcp + DHCP_XID_OFFSET),
        client: frame.load::<6>(dhcp + DHCP_CHADDR_OFFSET)?,
        ..Default::default()
    };
    if op == BOOTREPLY {
        if let Some(yiaddr) = frame.load::<4>(dhcp + DHCP_YIADDR_OFFSET) {
            m.addr[..4].copy_from_slice(&yiaddr);
        }
    }
    let mut at = dhcp + DHCP_OPTIONS_OFFSET;
    let mut i = 0;
    while i < MAX_OPTIONS {
        i += 1;
        if at >= end {
            break;
        }
        let Some([code]) = frame.load::<1>(at) else { break };
        if code == OPT_PAD {
            at += 1;
            continue;
        }
        if code == OPT_END {
            break;
        }
        let Some([len]) = frame.load::<1>(at + 1) else {
            break;
        };
        let value = at + 2;
        if value + u32::from(len) > end {
            break;
        }
        match code {
            OPT_MESSAGE_TYPE if len >= 1 => m.msg_type = frame.load::<1>(value).map_or(0, |[t]| t),
            OPT_LEASE_TIME if len >= 4 => m.lease = u32_at(frame, value),
            OPT_RENEWAL_TIME if len >= 4 => m.t1 = u32_at(frame, value),
            OPT_REBINDING_TIME if len >= 4 => m.t2 = u32_at(frame, value),
            OPT_REQUESTED_IP if len >= 4 && op == BOOTREQUEST => {
                if let Some(ip) = frame.load::<4>(value) {
                    m.addr[..4].copy_from_slice(&ip);
                }
            }
            OPT_HOSTNAME => m.hostname_at = at + 1,
            OPT_VENDOR_CLASS => m.vendor_at = at + 1,
            _ => {}
        }
        at = value + u32::from(len);
    }
    m.role = role_v4(m.msg_type);
    // A reply's role must come from a server, a request's from a client.
    if m.role.from_client() != (op == BOOTREQUEST) {
        m.role = Role::Other;
    }
    Some(m)
}

/// Reads a DHCPv6 message whose UDP payload runs from `dhcp` to `end`;
/// `client` is the guest's MAC (the frame's source for a client message,
/// its destination for a server's).
#[inline(always)]
pub fn read_v6<F: Frame + ?Sized>(frame: &F, dhcp: u32, end: u32, client: [u8; 6]) -> Option<Message> {
    if dhcp + 4 > end {
        return None;
    }
    let head = frame.load::<4>(dhcp)?;
    let mut m = Message {
        family: FAMILY_V6,
        msg_type: head[0],
        xid: u32::from_be_bytes([0, head[1], head[2], head[3]]),
        client,
        ..Default::default()
    };
    let mut at = dhcp + 4;
    let mut i = 0;
    while i < MAX_OPTIONS {
        i += 1;
        if at + 4 > end {
            break;
        }
        let Some(opt) = frame.load::<4>(at) else { break };
        let code = u16::from_be_bytes([opt[0], opt[1]]);
        let len = u32::from(u16::from_be_bytes([opt[2], opt[3]]));
        let value = at + 4;
        if value + len > end {
            break;
        }
        match code {
            // IAID, T1, T2, then options: the first IA Address.
            OPT6_IA_NA if len >= 12 => {
                m.t1 = u32_at(frame, value + 4);
                m.t2 = u32_at(frame, value + 8);
                if len >= 12 + 4 + 24 {
                    if let Some(sub) = frame.load::<4>(value + 12) {
                        if u16::from_be_bytes([sub[0], sub[1]]) == OPT6_IAADDR {
                            if let Some(addr) = frame.load::<16>(value + 16) {
                                m.addr = addr;
                            }
                            m.lease = u32_at(frame, value + 16 + 16 + 4);
                        }
                    }
                }
            }
            OPT6_FQDN => m.hostname_at = at + 2,
            OPT6_VENDOR_CLASS => m.vendor_at = at + 2,
            _ => {}
        }
        at = value + len;
    }
    let has_address = m.addr != [0; 16] && m.lease != 0;
    m.role = role_v6(m.msg_type, has_address);
    Some(m)
}

/// The name of a DHCPv4 message type (RFC 2132, 3203, 4388), e.g. `DHCPACK`.
pub fn message_type_name(t: u8) -> Option<&'static str> {
    Some(match t {
        1 => "DHCPDISCOVER",
        2 => "DHCPOFFER",
        3 => "DHCPREQUEST",
        4 => "DHCPDECLINE",
        5 => "DHCPACK",
        6 => "DHCPNAK",
        7 => "DHCPRELEASE",
        8 => "DHCPINFORM",
        9 => "DHCPFORCERENEW",
        10 => "DHCPLEASEQUERY",
        11 => "DHCPLEASEUNASSIGNED",
        12 => "DHCPLEASEUNKNOWN",
        13 => "DHCPLEASEACTIVE",
        _ => return None,
    })
}

/// The name of a DHCPv6 message type (RFC 8415), e.g. `REPLY`.
pub fn message_type_name_v6(t: u8) -> Option<&'static str> {
    Some(match t {
        1 => "SOLICIT",
        2 => "ADVERTISE",
        3 => "REQUEST",
        4 => "CONFIRM",
        5 => "RENEW",
        6 => "REBIND",
        7 => "REPLY",
        8 => "RELEASE",
        9 => "DECLINE",
        10 => "RECONFIGURE",
        11 => "INFORMATION-REQUEST",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DHCP: u32 = 42;

    /// A DHCPv4 message at offset 42 with `op` and the given options.
    fn v4(op: u8, options: &[u8]) -> ([u8; 700], u32) {
        let mut f = [0u8; 700];
        let d = DHCP as usize;
        f[d] = op;
        f[d + 4..d + 8].copy_from_slice(&0x1234_abcdu32.to_be_bytes());
        f[d + 16..d + 20].copy_from_slice(&[10, 0, 0, 7]);
        f[d + 28..d + 34].copy_from_slice(&[0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        f[d + 236..d + 240].copy_from_slice(&DHCP_MAGIC_COOKIE);
        f[d + 240..d + 240 + options.len()].copy_from_slice(options);
        (f, DHCP + 240 + options.len() as u32)
    }

    #[test]
    fn an_ack_with_times_and_an_offer() {
        let (f, end) = v4(
            BOOTREPLY,
            &[
                53, 1, 5, 54, 4, 10, 0, 0, 1, 51, 4, 0, 0, 0x0e, 0x10, 58, 4, 0, 0, 7, 8, 59, 4, 0, 0, 0x0c,
                0x4e, 255,
            ],
        );
        let m = read_v4(&f[..], DHCP, end).unwrap();
        assert_eq!(
            (m.role, m.xid, m.lease, m.t1, m.t2),
            (Role::Ack, 0x1234_abcd, 3600, 1800, 3150)
        );
        assert_eq!(&m.addr[..4], &[10, 0, 0, 7]);
        assert_eq!(m.client, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        let (f, end) = v4(BOOTREPLY, &[53, 1, 2, 255]);
        assert_eq!(read_v4(&f[..], DHCP, end).unwrap().role, Role::Offer);
    }

    #[test]
    fn a_request_with_host_name_and_vendor() {
        let (f, end) = v4(
            BOOTREQUEST,
            &[
                53, 1, 3, 50, 4, 10, 0, 0, 9, 12, 3, b'v', b'm', b'1', 60, 4, b'u', b'd', b'h', b'c', 255,
            ],
        );
        let m = read_v4(&f[..], DHCP, end).unwrap();
        assert_eq!(m.role, Role::Request);
        assert_eq!(&m.addr[..4], &[10, 0, 0, 9]);
        assert_eq!(f[m.hostname_at as usize], 3);
        assert_eq!(&f[m.hostname_at as usize + 1..m.hostname_at as usize + 4], b"vm1");
        assert_eq!(&f[m.vendor_at as usize + 1..m.vendor_at as usize + 5], b"udhc");
    }

    #[test]
    fn mismatched_direction_cut_short_and_no_cookie() {
        // An OFFER claiming to come from a client is not followed.
        let (f, end) = v4(BOOTREQUEST, &[53, 1, 2, 255]);
        assert_eq!(read_v4(&f[..], DHCP, end).unwrap().role, Role::Other);
        // An option running past the end stops the scan: no lease read.
        let (f, end) = v4(BOOTREPLY, &[53, 1, 5, 51, 4, 0, 0]);
        let m = read_v4(&f[..], DHCP, end).unwrap();
        assert_eq!((m.role, m.lease), (Role::Ack, 0));
        let (mut f, end) = v4(BOOTREPLY, &[53, 1, 5, 255]);
        f[DHCP as usize + 236] = 0;
        assert!(read_v4(&f[..], DHCP, end).is_none());
        assert!(read_v4(&f[..], DHCP, DHCP + 100).is_none());
    }

    #[test]
    fn the_option_scan_is_bounded() {
        let mut opts = [0u8; 3 * 17 + 3];
        for o in opts.chunks_mut(3).take(17) {
            o.copy_from_slice(&[12, 1, b'x']);
        }
        opts[51..54].copy_from_slice(&[53, 1, 5]);
        let (f, end) = v4(BOOTREPLY, &opts);
        assert_eq!(read_v4(&f[..], DHCP, end).unwrap().role, Role::Other);
    }

    #[test]
    fn dhcpv6_reply_with_an_address_and_a_solicit() {
        let mut f = [0u8; 300];
        let d = DHCP as usize;
        f[d..d + 4].copy_from_slice(&[REPLY, 0xab, 0xcd, 0xef]);
        // client id (1), then IA_NA (3) with IAADDR (5).
        let mut at = d + 4;
        f[at..at + 8].copy_from_slice(&[0, 1, 0, 4, 1, 2, 3, 4]);
        at += 8;
        f[at..at + 4].copy_from_slice(&[0, 3, 0, 40]);
        f[at + 4..at + 8].copy_from_slice(&7u32.to_be_bytes());
        f[at + 8..at + 12].copy_from_slice(&1800u32.to_be_bytes());
        f[at + 12..at + 16].copy_from_slice(&2880u32.to_be_bytes());
        f[at + 16..at + 20].copy_from_slice(&[0, 5, 0, 24]);
        f[at + 20..at + 36].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42]);
        f[at + 36..at + 40].copy_from_slice(&3000u32.to_be_bytes());
        f[at + 40..at + 44].copy_from_slice(&3600u32.to_be_bytes());
        let end = (at + 44) as u32;
        let m = read_v6(&f[..], DHCP, end, [2, 0, 0, 0, 0, 9]).unwrap();
        assert_eq!(
            (m.role, m.xid, m.t1, m.t2, m.lease),
            (Role::Ack, 0xabcdef, 1800, 2880, 3600)
        );
        assert_eq!(m.addr[15], 0x42);
        f[d] = SOLICIT;
        assert_eq!(read_v6(&f[..], DHCP, end, [0; 6]).unwrap().role, Role::Discover);
        // A reply without an address answers "no".
        f[d] = REPLY;
        assert_eq!(read_v6(&f[..], DHCP, DHCP + 12, [0; 6]).unwrap().role, Role::Nak);
    }

    #[test]
    fn roles() {
        assert!(Role::Offer.answers(Role::Discover) && Role::Ack.answers(Role::Request));
        assert!(!Role::Ack.answers(Role::Discover) && !Role::Offer.answers(Role::Request));
        for r in 0..=9 {
            assert_eq!(Role::from_raw(r) as u8, if r <= 8 { r } else { 0 });
        }
    }
}
