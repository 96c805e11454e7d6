//! Per-interface configuration written by the loader, read by the classifier.

/// Write the full checksum into partial skbs on offload-capable devices.
pub const MODE_FILL: u32 = 1;
/// Count what would be filled, change nothing.
pub const MODE_AUDIT: u32 = 2;

/// How many destination ports one interface can watch.
pub const MAX_PORTS: usize = 4;
/// The DHCP ports watched by default: 68 (replies to clients) and 67 (to
/// servers and relays inside guests).
pub const DEFAULT_PORTS: [u16; 2] = [68, 67];

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

/// Configuration of one attached interface (map value, key = ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceConfig {
    /// [`MODE_FILL`] or [`MODE_AUDIT`]; anything else leaves packets alone.
    pub mode: u32,
    /// Reserved for future flags; zero.
    pub flags: u32,
    /// UDP destination ports to act on, host byte order; 0 = unused slot.
    pub ports: [u16; MAX_PORTS],
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
        }
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
// SAFETY: plain #[repr(C)] integers, no padding, every bit pattern valid.
unsafe impl aya::Pod for IfaceConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_only_configured_ports() {
        let cfg = IfaceConfig::new(MODE_FILL, &DEFAULT_PORTS);
        assert!(cfg.watches(67) && cfg.watches(68));
        assert!(!cfg.watches(0) && !cfg.watches(53) && !cfg.watches(546));
        let cfg = IfaceConfig::new(MODE_FILL, &[0, 1067, 2, 3, 4, 5]);
        assert_eq!(cfg.ports, [1067, 2, 3, 4]);
    }
}
