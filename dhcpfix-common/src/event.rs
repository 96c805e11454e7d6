//! The event the classifier emits for each filled (or, in audit mode,
//! would-be filled) DHCP packet, read by `dhcpfix run` from a ring buffer.
//!
//! Events are best effort: when the ring buffer is full the classifier skips
//! the event, never the fill, and the counters stay exact.

use crate::{
    dhcp::{self, FAMILY_V6},
    frame::{DhcpPacket, Frame},
    key::IfaceKey,
};

/// [`FillEvent::outcome`]: the checksum was written.
pub const EVENT_FILLED: u8 = 1;
/// [`FillEvent::outcome`]: audit mode; it would have been written.
pub const EVENT_WOULD_FILL: u8 = 2;

/// Size of the ring buffer in bytes (a power-of-two number of pages):
/// room for about 2,000 events between two reads of the agent.
pub const EVENTS_BYTES: u32 = 64 * 1024;

/// One filled packet (ring buffer record).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FillEvent {
    /// Network namespace (cookie) of the interface the packet left through.
    pub netns: u64,
    /// Interface the packet left through.
    pub ifindex: u32,
    /// DHCP transaction id, host byte order (DHCPv6: 24 bits).
    pub xid: u32,
    /// The guest's MAC: the client hardware address (`chaddr`) of DHCPv4,
    /// the frame's destination for DHCPv6.
    pub mac: [u8; 6],
    /// DHCP message type (option 53; DHCPv6: the first byte); 0 if not found.
    pub msg_type: u8,
    /// [`EVENT_FILLED`] or [`EVENT_WOULD_FILL`].
    pub outcome: u8,
    /// UDP destination port, host byte order.
    pub dport: u16,
    /// 4 or 6.
    pub family: u8,
    /// Zero.
    pub reserved: u8,
    /// Zero.
    pub reserved2: u32,
}

impl FillEvent {
    /// Reads the event fields of `packet` from `frame`. Fields that cannot be
    /// read stay zero: an event is information, never a reason to fail.
    #[inline(always)]
    pub fn read<F: Frame + ?Sized>(frame: &F, key: IfaceKey, packet: &DhcpPacket, outcome: u8) -> Self {
        let mut e = Self {
            netns: key.netns,
            ifindex: key.ifindex,
            outcome,
            dport: packet.dport,
            family: packet.family,
            ..Default::default()
        };
        let message = if packet.family == FAMILY_V6 {
            let client = frame.load::<6>(0).unwrap_or_default();
            dhcp::read_v6(frame, packet.payload(), packet.end(), client)
        } else {
            dhcp::read_v4(frame, packet.payload(), packet.end())
        };
        if let Some(m) = message {
            e.xid = m.xid;
            e.mac = m.client;
            e.msg_type = m.msg_type;
        }
        e
    }
}

#[cfg(feature = "user")]
// SAFETY: plain #[repr(C)] integers and byte arrays laid out without padding
// (8 + 4 + 4 + 6 + 1 + 1 + 2 + 1 + 1 + 4 = 32 bytes, 8-aligned); every bit
// pattern valid.
unsafe impl aya::Pod for FillEvent {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::{message_type_name, DHCP_MAGIC_COOKIE};

    const L4: u32 = 34;

    /// Ethernet + IPv4 + UDP + a DHCP reply with the given options.
    fn frame(options: &[u8]) -> ([u8; 600], DhcpPacket) {
        let mut f = [0u8; 600];
        let dhcp = (L4 + 8) as usize;
        f[dhcp] = 2;
        f[dhcp + 4..dhcp + 8].copy_from_slice(&0x1234_abcdu32.to_be_bytes());
        f[dhcp + 28..dhcp + 34].copy_from_slice(&[0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        f[dhcp + 236..dhcp + 240].copy_from_slice(&DHCP_MAGIC_COOKIE);
        f[dhcp + 240..dhcp + 240 + options.len()].copy_from_slice(options);
        let udp_len = (8 + 240 + options.len() + 1) as u16;
        let packet = DhcpPacket {
            family: 4,
            l3: 14,
            l4: L4,
            udp_len,
            src: [0; 16],
            dst: [0; 16],
            sport: 67,
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
        assert_eq!((e.outcome, e.dport, e.family), (EVENT_FILLED, 68, 4));
    }

    #[test]
    fn short_packets_leave_fields_zero() {
        let (f, mut p) = frame(&[53, 1, 5]);
        p.udp_len = 8 + 20;
        let e = FillEvent::read(&f[..], IfaceKey::new(9, 3), &p, EVENT_WOULD_FILL);
        assert_eq!((e.xid, e.mac, e.msg_type), (0, [0; 6], 0));
    }

    #[test]
    fn record_has_no_padding() {
        assert_eq!(core::mem::size_of::<FillEvent>(), 32);
    }
}
