//! Reading DHCP (RFC 2131/2132) and DHCPv6 (RFC 8415) messages.
//!
//! The classifier reads only what each guest's state machine needs, at
//! fixed places ([`read_v4`], [`read_v6`]: message type, transaction,
//! client, address) and keeps the first bytes of the options as they came
//! ([`OPTIONS_LEN`]); userspace finds the lease times, host name and vendor
//! class in those bytes ([`options_v4`], [`options_v6`]). Walking options in
//! the kernel would cost the verifier (and each packet) far more.
//!
//! Generic over [`Frame`], so the kernel's code is tested on the host; every
//! read is bounded, and a field that cannot be read stays zero (an
//! observation is information, never a reason to touch the packet).

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
pub const DHCP_CIADDR_OFFSET: u32 = 12;
pub const DHCP_YIADDR_OFFSET: u32 = 16;
pub const DHCP_CHADDR_OFFSET: u32 = 28;
pub const DHCP_COOKIE_OFFSET: u32 = 236;
pub const DHCP_OPTIONS_OFFSET: u32 = 240;
/// The magic cookie that starts the options (99.130.83.99).
pub const DHCP_MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Where DHCPv6 options start (after type and transaction id).
pub const DHCP6_OPTIONS_OFFSET: u32 = 4;

/// DHCPv4 options (RFC 2132).
pub const OPT_PAD: u8 = 0;
pub const OPT_HOSTNAME: u8 = 12;
pub const OPT_REQUESTED_IP: u8 = 50;
pub const OPT_LEASE_TIME: u8 = 51;
pub const OPT_MESSAGE_TYPE: u8 = 53;
pub const OPT_RENEWAL_TIME: u8 = 58;
pub const OPT_REBINDING_TIME: u8 = 59;
pub const OPT_VENDOR_CLASS: u8 = 60;
pub const OPT_END: u8 = 255;

/// DHCPv6 options (RFC 8415, 4704).
pub const OPT6_IA_NA: u16 = 3;
pub const OPT6_IAADDR: u16 = 5;
pub const OPT6_VENDOR_CLASS: u16 = 16;
pub const OPT6_FQDN: u16 = 39;

/// Options looked at for the message type in the kernel. Clients and
/// servers put it first or nearly; the bound keeps the verifier's work small.
pub const MAX_TYPE_SCAN: u32 = 8;
/// Bytes of options kept per message (a power of two).
pub const OPTIONS_LEN: usize = 128;

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
    /// ACK, v6 REPLY.
    Ack = 5,
    /// NAK.
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

/// The role of a DHCPv6 message type (a REPLY is an ACK; whether it gave
/// an address is in its options).
pub fn role_v6(msg_type: u8) -> Role {
    match msg_type {
        SOLICIT => Role::Discover,
        ADVERTISE => Role::Offer,
        REQUEST | CONFIRM | RENEW | REBIND => Role::Request,
        REPLY => Role::Ack,
        RELEASE => Role::Release,
        DECLINE => Role::Decline,
        INFORMATION_REQUEST => Role::Inform,
        _ => Role::Other,
    }
}

/// What the classifier reads of one message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub family: u8,
    pub msg_type: u8,
    pub role: Role,
    pub xid: u32,
    /// The guest's MAC: `chaddr` (v4) or the frame's address (v6).
    pub client: [u8; 6],
    /// A v4 reply's `yiaddr`; a v4 request's `ciaddr`, the address a
    /// client holds and renews (zero while it has none).
    pub addr: [u8; 4],
    /// Where the options start, and end (the end of the UDP payload).
    pub options: u32,
    pub end: u32,
}

/// The DHCPv4 message type (option 53) in the options at `at..end`; 0 if it
/// is not among the first [`MAX_TYPE_SCAN`] options.
#[inline(always)]
pub fn message_type<F: Frame + ?Sized>(frame: &F, mut at: u32, end: u32) -> u8 {
    let mut i = 0;
    while i < MAX_TYPE_SCAN {
        i += 1;
        if at >= end {
            return 0;
        }
        let Some([code]) = frame.load::<1>(at) else {
            return 0;
        };
        match code {
            OPT_PAD => at += 1,
            OPT_END => return 0,
            _ => {
                let Some([len]) = frame.load::<1>(at + 1) else {
                    return 0;
                };
                if code == OPT_MESSAGE_TYPE {
                    if len == 0 || at + 3 > end {
                        return 0;
                    }
                    return frame.load::<1>(at + 2).map_or(0, |[t]| t);
                }
                at += 2 + u32::from(len);
            }
        }
    }
    0
}

/// Reads a DHCPv4 message whose UDP payload runs from `dhcp` to `end`.
/// `None` when it is not one (no magic cookie, cut short).
#[inline(always)]
pub fn read_v4<F: Frame + ?Sized>(frame: &F, dhcp: u32, end: u32) -> Option<Message> {
    let options = dhcp + DHCP_OPTIONS_OFFSET;
    if options > end || frame.load::<4>(dhcp + DHCP_COOKIE_OFFSET) != Some(DHCP_MAGIC_COOKIE) {
        return None;
    }
    let [op] = frame.load::<1>(dhcp + DHCP_OP_OFFSET)?;
    let msg_type = message_type(frame, options, end);
    let mut role = role_v4(msg_type);
    // A reply's role must come from a server, a request's from a client.
    if role.from_client() != (op == BOOTREQUEST) {
        role = Role::Other;
    }
    Some(Message {
        family: FAMILY_V4,
        msg_type,
        role,
        xid: frame
            .load::<4>(dhcp + DHCP_XID_OFFSET)
            .map_or(0, u32::from_be_bytes),
        client: frame.load::<6>(dhcp + DHCP_CHADDR_OFFSET)?,
        addr: frame
            .load::<4>(
                dhcp + if op == BOOTREPLY {
                    DHCP_YIADDR_OFFSET
                } else {
                    DHCP_CIADDR_OFFSET
                },
            )
            .unwrap_or_default(),
        options,
        end,
    })
}

/// Reads a DHCPv6 message whose UDP payload runs from `dhcp` to `end`;
/// `client` is the guest's MAC (the frame's source for a client message,
/// its destination for a server's).
#[inline(always)]
pub fn read_v6<F: Frame + ?Sized>(frame: &F, dhcp: u32, end: u32, client: [u8; 6]) -> Option<Message> {
    let options = dhcp + DHCP6_OPTIONS_OFFSET;
    if options > end {
        return None;
    }
    let head = frame.load::<4>(dhcp)?;
    Some(Message {
        family: FAMILY_V6,
        msg_type: head[0],
        role: role_v6(head[0]),
        xid: u32::from_be_bytes([0, head[1], head[2], head[3]]),
        client,
        addr: [0; 4],
        options,
        end,
    })
}

/// What userspace finds in a message's options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options<'a> {
    /// DHCPv4 option 53.
    pub msg_type: u8,
    /// Lease (v4 option 51; v6 the IA Address's valid lifetime), renewal
    /// (T1) and rebinding (T2) times, seconds; `None` when absent.
    pub lease: Option<u32>,
    pub t1: Option<u32>,
    pub t2: Option<u32>,
    /// DHCPv4 option 50 (requested address); the v6 IA Address.
    pub addr: Option<[u8; 16]>,
    /// The host name (v4 option 12; v6 the FQDN option's name, in DNS wire
    /// form) and vendor class (v4 option 60; v6 the first vendor-class
    /// data), as sent.
    pub hostname: Option<&'a [u8]>,
    pub vendor: Option<&'a [u8]>,
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// The DHCPv4 options in `opts` (cut anywhere: what is whole is read).
pub fn options_v4(opts: &[u8]) -> Options<'_> {
    let mut o = Options::default();
    let mut at = 0;
    while let Some(&code) = opts.get(at) {
        match code {
            OPT_PAD => {
                at += 1;
                continue;
            }
            OPT_END => break,
            _ => {}
        }
        let Some(&len) = opts.get(at + 1) else { break };
        let Some(value) = opts.get(at + 2..at + 2 + usize::from(len)) else {
            break;
        };
        match code {
            OPT_MESSAGE_TYPE => o.msg_type = value.first().copied().unwrap_or(0),
            OPT_LEASE_TIME => o.lease = be32(value),
            OPT_RENEWAL_TIME => o.t1 = be32(value),
            OPT_REBINDING_TIME => o.t2 = be32(value),
            OPT_REQUESTED_IP if value.len() >= 4 => {
                let mut a = [0; 16];
                a[..4].copy_from_slice(&value[..4]);
                o.addr = Some(a);
            }
            OPT_HOSTNAME => o.hostname = Some(value),
            OPT_VENDOR_CLASS => o.vendor = Some(value),
            _ => {}
        }
        at += 2 + usize::from(len);
    }
    o
}

/// The DHCPv6 options in `opts` (cut anywhere: what is whole is read).
pub fn options_v6(opts: &[u8]) -> Options<'_> {
    let mut o = Options::default();
    let mut at = 0;
    while let Some(head) = opts.get(at..at + 4) {
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let Some(value) = opts.get(at + 4..at + 4 + len) else {
            break;
        };
        match code {
            // IAID, T1, T2, then options: the first IA Address.
            OPT6_IA_NA if len >= 12 => {
                o.t1 = be32(&value[4..]);
                o.t2 = be32(&value[8..]);
                let sub = &value[12..];
                if sub.len() >= 4 + 24 && u16::from_be_bytes([sub[0], sub[1]]) == OPT6_IAADDR {
                    o.addr = sub[4..20].try_into().ok();
                    o.lease = be32(&sub[24..]);
                }
            }
            // Flags, then the name.
            OPT6_FQDN if len >= 1 => o.hostname = Some(&value[1..]),
            // Enterprise number, then length-prefixed data.
            OPT6_VENDOR_CLASS if len >= 6 => {
                let data_len = usize::from(u16::from_be_bytes([value[4], value[5]]));
                o.vendor = value.get(6..6 + data_len);
            }
            _ => {}
        }
        at += 4 + len;
    }
    o
}

/// A DNS wire-form name (`\x03vm1\x05local\x00`) as dotted text; other
/// bytes as they are (lossy UTF-8).
pub fn wire_name(bytes: &[u8]) -> Option<([u8; 255], usize)> {
    let mut out = [0u8; 255];
    let mut n = 0;
    let mut at = 0;
    while let Some(&len) = bytes.get(at) {
        if len == 0 {
            break;
        }
        let label = bytes.get(at + 1..at + 1 + usize::from(len))?;
        if n > 0 {
            *out.get_mut(n)? = b'.';
            n += 1;
        }
        out.get_mut(n..n + label.len())?.copy_from_slice(label);
        n += label.len();
        at += 1 + usize::from(len);
    }
    Some((out, n))
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
    fn an_ack_and_its_options() {
        let opts = [
            53, 1, 5, 54, 4, 10, 0, 0, 1, 51, 4, 0, 0, 0x0e, 0x10, 58, 4, 0, 0, 7, 8, 59, 4, 0, 0, 0x0c,
            0x4e, 255,
        ];
        let (f, end) = v4(BOOTREPLY, &opts);
        let m = read_v4(&f[..], DHCP, end).unwrap();
        assert_eq!((m.role, m.xid, m.addr), (Role::Ack, 0x1234_abcd, [10, 0, 0, 7]));
        assert_eq!(m.client, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!((m.options, m.end), (DHCP + 240, end));
        let o = options_v4(&opts);
        assert_eq!(
            (o.msg_type, o.lease, o.t1, o.t2),
            (5, Some(3600), Some(1800), Some(3150))
        );
        let (f, end) = v4(BOOTREPLY, &[53, 1, 2, 255]);
        assert_eq!(read_v4(&f[..], DHCP, end).unwrap().role, Role::Offer);
    }

    #[test]
    fn a_request_with_host_name_and_vendor() {
        let opts = [
            53, 1, 3, 50, 4, 10, 0, 0, 9, 12, 3, b'v', b'm', b'1', 60, 4, b'u', b'd', b'h', b'c', 255,
        ];
        let (mut f, end) = v4(BOOTREQUEST, &opts);
        let m = read_v4(&f[..], DHCP, end).unwrap();
        assert_eq!(
            (m.role, m.addr),
            (Role::Request, [0; 4]),
            "no ciaddr: yiaddr is not read"
        );
        // A renewal comes from the client's address (ciaddr).
        f[DHCP as usize + 12..DHCP as usize + 16].copy_from_slice(&[10, 0, 0, 9]);
        assert_eq!(read_v4(&f[..], DHCP, end).unwrap().addr, [10, 0, 0, 9]);
        let o = options_v4(&opts);
        assert_eq!(o.addr.map(|a| [a[0], a[1], a[2], a[3]]), Some([10, 0, 0, 9]));
        assert_eq!((o.hostname, o.vendor), (Some(&b"vm1"[..]), Some(&b"udhc"[..])));
        // Cut in the middle of an option: what is whole is kept.
        let o = options_v4(&opts[..16]);
        assert_eq!((o.hostname, o.vendor), (Some(&b"vm1"[..]), None));
    }

    #[test]
    fn mismatched_direction_no_cookie_and_a_bounded_type_scan() {
        let (f, end) = v4(BOOTREQUEST, &[53, 1, 2, 255]);
        assert_eq!(read_v4(&f[..], DHCP, end).unwrap().role, Role::Other);
        let (mut f, end) = v4(BOOTREPLY, &[53, 1, 5, 255]);
        f[DHCP as usize + 236] = 0;
        assert!(read_v4(&f[..], DHCP, end).is_none());
        assert!(read_v4(&f[..], DHCP, DHCP + 100).is_none());
        let mut many = [0u8; 27];
        for o in many.chunks_mut(3).take(8) {
            o.copy_from_slice(&[12, 1, b'x']);
        }
        many[24..27].copy_from_slice(&[53, 1, 5]);
        let (f, end) = v4(BOOTREPLY, &many);
        assert_eq!(read_v4(&f[..], DHCP, end).unwrap().msg_type, 0);
        // A zero-length type option, one cut off by the end.
        let (f, end) = v4(BOOTREPLY, &[53, 0, 255]);
        assert_eq!(read_v4(&f[..], DHCP, end).unwrap().msg_type, 0);
        let (f, _) = v4(BOOTREPLY, &[53, 1, 5]);
        assert_eq!(message_type(&f[..], DHCP + 240, DHCP + 242), 0);
    }

    #[test]
    fn dhcpv6_reply_and_its_options() {
        let mut opts = [0u8; 62];
        let parts: [&[u8]; 9] = [
            &[0, 1, 0, 4, 1, 2, 3, 4], // client id
            &[0, 3, 0, 40],            // IA_NA
            &[0, 0, 0, 7, 0, 0, 0x07, 0x08, 0, 0, 0x0b, 0x40],
            &[0, 5, 0, 24], // IAADDR
            &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42],
            &3000u32.to_be_bytes(),
            &3600u32.to_be_bytes(),
            &[0, 39, 0, 6, 0, 3], // FQDN
            &[b'v', b'm', b'1', 0],
        ];
        let mut at = 0;
        for p in parts {
            opts[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        let o = options_v6(&opts[..at]);
        assert_eq!((o.t1, o.t2, o.lease), (Some(1800), Some(2880), Some(3600)));
        assert_eq!(o.addr.unwrap()[15], 0x42);
        let (name, n) = wire_name(o.hostname.unwrap()).unwrap();
        assert_eq!(&name[..n], b"vm1");
        let mut f = [0u8; 100];
        f[DHCP as usize..DHCP as usize + 4].copy_from_slice(&[REPLY, 0xab, 0xcd, 0xef]);
        let m = read_v6(&f[..], DHCP, DHCP + 20, [2, 0, 0, 0, 0, 9]).unwrap();
        assert_eq!((m.role, m.xid, m.options), (Role::Ack, 0xabcdef, DHCP + 4));
        f[DHCP as usize] = SOLICIT;
        assert_eq!(
            read_v6(&f[..], DHCP, DHCP + 20, [0; 6]).unwrap().role,
            Role::Discover
        );
        assert!(read_v6(&f[..], DHCP, DHCP + 2, [0; 6]).is_none());
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
