//! Per-interface configuration written by the loader, read by the classifier.

/// Write the full checksum into partial skbs on offload-capable devices.
pub const MODE_FILL: u32 = 1;
/// Count what would be filled, change nothing.
pub const MODE_AUDIT: u32 = 2;

/// How many destination ports one interface can watch.
pub const MAX_PORTS: usize = 4;
/// The DHCP ports watched by default: 68 (replies to clients) and 67 (to
/// servers and relays inside guests), and their DHCPv6 counterparts 546
/// and 547. The parser tells the families apart by ethertype, so a DHCPv4
/// port in an IPv6 packet (or the reverse) is handled the same way.
pub const DEFAULT_PORTS: [u16; 4] = [68, 67, 546, 547];

/// `flags` bit: attached through a netlink clsact filter, not a pinned tcx
/// link (kernels before 6.6). The classifier ignores flags.
pub const FLAG_NETLINK: u32 = 1 << 0;

/// Words of the watched-ports bitmap, one bit per UDP port. The classifier
/// tests a packet's destination port against it before any hash lookup, so
/// non-DHCP UDP leaves on the fast path.
pub const PORT_BITMAP_WORDS: u32 = 65536 / 64;

/// The bitmap word and bit of `port`.
#[inline(always)]
pub const fn port_bit(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1u64 << (port & 63))
}

/// Longest interface name, with its NUL (`IFNAMSIZ`).
pub const IFNAMSIZ: usize = 16;

/// Configuration of one attached interface (map value, key =
/// [`crate::key::IfaceKey`]). The classifier reads `mode` and `ports`; the
/// rest is the loader's record of what it attached to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceConfig {
    /// [`MODE_FILL`] or [`MODE_AUDIT`]; anything else leaves packets alone.
    pub mode: u32,
    /// [`FLAG_NETLINK`]; the classifier ignores flags.
    pub flags: u32,
    /// UDP destination ports to act on, host byte order; 0 = unused slot.
    pub ports: [u16; MAX_PORTS],
    /// The interface's MAC when it was attached: libvirt's hook finds a
    /// stopped guest's taps by it (their names are gone from the XML then).
    pub mac: [u8; 6],
    /// A netlink filter's priority and handle (with [`FLAG_NETLINK`]): an
    /// upgrade replaces exactly that filter, in place.
    pub netlink_prio: u16,
    pub netlink_handle: u32,
    /// Zero.
    pub reserved: u32,
    /// The interface's name (NUL-padded), kept current on renames: what
    /// `status` shows once the interface is gone.
    pub name: [u8; IFNAMSIZ],
    /// A record that differs from ABI 2's, only in builds made to test
    /// upgrades between record versions.
    #[cfg(feature = "next-abi")]
    pub next_abi: u64,
}

impl IfaceConfig {
    /// A configuration for `mode` watching `ports` (at most [`MAX_PORTS`];
    /// extra ports are ignored, zero ports are skipped).
    pub fn new(mode: u32, ports: &[u16]) -> Self {
        let mut slots = [0u16; MAX_PORTS];
        for (slot, port) in slots.iter_mut().zip(ports.iter().filter(|p| **p != 0)) {
            *slot = *port;
        }
        Self {
            mode,
            flags: 0,
            ports: slots,
            mac: [0; 6],
            netlink_prio: 0,
            netlink_handle: 0,
            reserved: 0,
            name: [0; IFNAMSIZ],
            #[cfg(feature = "next-abi")]
            next_abi: 0,
        }
    }

    /// Records the interface's name (cut to [`IFNAMSIZ`] - 1 bytes) and MAC.
    pub fn with_identity(mut self, name: &str, mac: [u8; 6]) -> Self {
        self.set_name(name);
        self.mac = mac;
        self
    }

    /// Records a new name (after a rename).
    pub fn set_name(&mut self, name: &str) {
        self.name = [0; IFNAMSIZ];
        for (slot, b) in self.name.iter_mut().take(IFNAMSIZ - 1).zip(name.bytes()) {
            *slot = b;
        }
    }

    /// The recorded name (bytes up to the first NUL).
    pub fn name_bytes(&self) -> &[u8] {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(IFNAMSIZ);
        &self.name[..end]
    }

    /// Whether `port` (host byte order) is one of the watched ports.
    #[inline(always)]
    pub fn watches(&self, port: u16) -> bool {
        port != 0
            && (self.ports[0] == port
                || self.ports[1] == port
                || self.ports[2] == port
                || self.ports[3] == port)
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] integers and byte arrays, 4 + 4 + 8 + 6 + 2 + 4 + 4 +
// 16 = 48 bytes (56 with `next-abi`) without padding; every bit pattern is
// valid.
unsafe impl aya::Pod for IfaceConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_only_configured_ports() {
        let cfg = IfaceConfig::new(MODE_FILL, &DEFAULT_PORTS);
        assert!(cfg.watches(67) && cfg.watches(68));
        assert!(cfg.watches(546) && cfg.watches(547));
        assert!(!cfg.watches(0) && !cfg.watches(53) && !cfg.watches(1067));
        let cfg = IfaceConfig::new(MODE_FILL, &[0, 1067, 2, 3, 4, 5]);
        assert_eq!(cfg.ports, [1067, 2, 3, 4]);
    }

    #[test]
    fn names_are_cut_and_nul_padded() {
        let mut cfg = IfaceConfig::new(MODE_FILL, &DEFAULT_PORTS).with_identity("vnet0", [2, 0, 0, 0, 0, 1]);
        assert_eq!(cfg.name_bytes(), b"vnet0");
        cfg.set_name("a-name-longer-than-fifteen");
        assert_eq!(cfg.name_bytes(), b"a-name-longer-t");
        let expected = if cfg!(feature = "next-abi") { 56 } else { 48 };
        assert_eq!(core::mem::size_of::<IfaceConfig>(), expected);
    }
}
