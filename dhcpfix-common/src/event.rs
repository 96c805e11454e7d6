//! The event the classifier emits for each filled (or, in audit mode,
//! would-be filled) DHCP packet, read by `dhcpfix run` from a ring buffer.
//!
//! Events are best effort: when the ring buffer is full the classifier skips
//! the event, never the fill, and the counters stay exact.

use crate::{
    frame::{DhcpPacket, Frame},
    key::IfaceKey,
};

/// [`FillEvent::outcome`]: the checksum was written.
pub const EVENT_FILLED: u8 = 1;
/// [`FillEvent::outcome`]: audit mode; it would have been written.
pub const EVENT_WOULD_FILL: u8 = 2;

/// Size of the ring buffer in bytes (a power-of-two number of pages):
/// room for about 2,300 events between two reads of the agent.
pub const EVENTS_BYTES: u32 = 64 * 1024;

/// Offsets inside the DHCP message (the UDP payload), RFC 2131.
pub const DHCP_XID_OFFSET: u32 = 4;
pub const DHCP_CHADDR_OFFSET: u32 = 28;
pub const DHCP_COOKIE_OFFSET: u32 = 236;
pub const DHCP_OPTIONS_OFFSET: u32 = 240;
/// The magic cookie that starts the options (99.130.83.99).
pub const DHCP_MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Option 53, DHCP message type.
pub const OPTION_MESSAGE_TYPE: u8 = 53;
const OPTION_PAD: u8 = 0;
const OPTION_END: u8 = 255;
/// Options looked at before giving up on finding the message type. Servers
/// put it first (dnsmasq, ISC dhcpd, Kea); the bound keeps the verifier's
/// work and the datapath's cost small.
pub const MAX_OPTIONS_SCANNED: u32 = 8;

/// One filled packet (ring buffer record).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FillEvent {
    /// Network namespace (cookie) of the interface the packet left through.
    pub netns: u64,
    /// Interface the packet left through.
    pub ifindex: u32,
    /// DHCP transaction id, host byte order.
    pub xid: u32,
    /// Client hardware address (`chaddr`): the guest's MAC.
    pub mac: [u8; 6],
    /// DHCP message type (option 53); 0 if not found.
    pub msg_type: u8,
    /// [`EVENT_FILLED`] or [`EVENT_WOULD_FILL`].
    pub outcome: u8,
    /// UDP destination port, host byte order.
    pub dport: u16,
    /// Zero.
    pub reserved: u16,
    /// Zero.
    pub reserved2: u32,
}

impl FillEvent {
    /// Reads the event fields of `packet` from `frame`. Fields that cannot be
    /// read stay zero: an event is information, never a reason to fail.
    #[inline(always)]
    pub fn read<F: Frame + ?Sized>(frame: &F, key: IfaceKey, packet: &DhcpPacket, outcome: u8) -> Self {
        let dhcp = packet.l4 + 8;
        let end = packet.l4 + u32::from(packet.udp_len);
        let xid = match frame.load::<4>(dhcp + DHCP_XID_OFFSET) {
            Some(b) if dhcp + DHCP_XID_OFFSET + 4 <= end => u32::from_be_bytes(b),
            _ => 0,
        };
        let mac = match frame.load::<6>(dhcp + DHCP_CHADDR_OFFSET) {
            Some(b) if dhcp + DHCP_CHADDR_OFFSET + 6 <= end => b,
            _ => [0; 6],
        };
        Self {
            netns: key.netns,
            ifindex: key.ifindex,
            xid,
            mac,
            msg_type: message_type(frame, dhcp, end),
            outcome,
            dport: packet.dport,
            reserved: 0,
            reserved2: 0,
        }
    }
}

/// The DHCP message type (option 53) of the DHCP message at `dhcp`, ending
/// at `end`; 0 if there is no magic cookie or the option is not among the
/// first [`MAX_OPTIONS_SCANNED`] options.
#[inline(always)]
pub fn message_type<F: Frame + ?Sized>(frame: &F, dhcp: u32, end: u32) -> u8 {
    if frame.load::<4>(dhcp + DHCP_COOKIE_OFFSET) != Some(DHCP_MAGIC_COOKIE) {
        return 0;
    }
    let mut at = dhcp + DHCP_OPTIONS_OFFSET;
    let mut i = 0;
    while i < MAX_OPTIONS_SCANNED {
        i += 1;
        if at >= end {
            return 0;
        }
        let Some([code]) = frame.load::<1>(at) else {
            return 0;
        };
        match code {
            OPTION_PAD => at += 1,
            OPTION_END => return 0,
            _ => {
                let Some([len]) = frame.load::<1>(at + 1) else {
                    return 0;
                };
                if code == OPTION_MESSAGE_TYPE {
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

/// The name of a DHCP message type (RFC 2132, 3203, 4388), e.g. `DHCPACK`.
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

#[cfg(feature = "user")]
// SAFETY: plain #[repr(C)] integers and byte arrays laid out without padding
// (8 + 4 + 4 + 6 + 1 + 1 + 2 + 2 + 4 = 32 bytes, 8-aligned); every bit
// pattern valid.
unsafe impl aya::Pod for FillEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    const L4: u32 = 34;

    /// Ethernet + IPv4 + UDP + a DHCP message with the given options.
    fn frame(options: &[u8]) -> ([u8; 600], DhcpPacket) {
        let mut f = [0u8; 600];
        let dhcp = (L4 + 8) as usize;
        f[dhcp + 4..dhcp + 8].copy_from_slice(&0x1234_abcdu32.to_be_bytes());
        f[dhcp + 28..dhcp + 34].copy_from_slice(&[0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        f[dhcp + 236..dhcp + 240].copy_from_slice(&DHCP_MAGIC_COOKIE);
        f[dhcp + 240..dhcp + 240 + options.len()].copy_from_slice(options);
        let udp_len = (8 + 240 + options.len() + 1) as u16;
        let packet = DhcpPacket {
            l3: 14,
            l4: L4,
            udp_len,
            src: [10, 0, 0, 1],
            dst: [10, 0, 0, 2],
            dport: 68,
        };
        (f, packet)
    }

    #[test]
    fn reads_xid_mac_and_type() {
        let (f, p) = frame(&[53, 1, 5, 54, 4, 10, 0, 0, 1, 255]);
        let e = FillEvent::read(&f[..], IfaceKey::new(9, 7), &p, EVENT_FILLED);
        assert_eq!((e.netns, e.ifindex), (9, 7));
        assert_eq!(e.xid, 0x1234_abcd);
        assert_eq!(e.mac, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(e.msg_type, 5);
        assert_eq!(message_type_name(e.msg_type), Some("DHCPACK"));
        assert_eq!((e.outcome, e.dport), (EVENT_FILLED, 68));
    }

    #[test]
    fn finds_the_type_after_pads_and_other_options() {
        let (f, p) = frame(&[0, 0, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 0, 1, 53, 1, 2, 255]);
        assert_eq!(
            FillEvent::read(&f[..], IfaceKey::new(9, 1), &p, EVENT_FILLED).msg_type,
            2
        );
    }

    #[test]
    fn gives_up_without_cookie_after_end_or_after_the_bound() {
        let (mut f, p) = frame(&[53, 1, 5]);
        f[(L4 + 8 + 236) as usize] = 0;
        assert_eq!(
            FillEvent::read(&f[..], IfaceKey::new(9, 1), &p, EVENT_FILLED).msg_type,
            0
        );
        let (f, p) = frame(&[255, 53, 1, 5]);
        assert_eq!(
            FillEvent::read(&f[..], IfaceKey::new(9, 1), &p, EVENT_FILLED).msg_type,
            0
        );
        let mut many = [0u8; 9 * 3];
        for o in many.chunks_mut(3).take(8) {
            o.copy_from_slice(&[12, 1, b'x']);
        }
        many[24..27].copy_from_slice(&[53, 1, 5]);
        let (f, p) = frame(&many);
        assert_eq!(
            FillEvent::read(&f[..], IfaceKey::new(9, 1), &p, EVENT_FILLED).msg_type,
            0
        );
        // A zero-length type option, and one cut off by the UDP length.
        let (f, p) = frame(&[53, 0, 255]);
        assert_eq!(
            FillEvent::read(&f[..], IfaceKey::new(9, 1), &p, EVENT_FILLED).msg_type,
            0
        );
        let (f, mut p) = frame(&[53, 1, 5]);
        p.udp_len = (8 + 240 + 2) as u16;
        assert_eq!(
            FillEvent::read(&f[..], IfaceKey::new(9, 1), &p, EVENT_FILLED).msg_type,
            0
        );
    }

    #[test]
    fn short_packets_leave_fields_zero() {
        let (f, mut p) = frame(&[53, 1, 5]);
        p.udp_len = 8 + 20;
        let e = FillEvent::read(&f[..], IfaceKey::new(9, 3), &p, EVENT_WOULD_FILL);
        assert_eq!((e.xid, e.mac, e.msg_type), (0x1234_abcd, [0; 6], 0));
        p.udp_len = 8;
        assert_eq!(
            FillEvent::read(&f[..], IfaceKey::new(9, 3), &p, EVENT_WOULD_FILL).xid,
            0
        );
    }

    #[test]
    fn record_has_no_padding() {
        assert_eq!(core::mem::size_of::<FillEvent>(), 32);
    }
}
