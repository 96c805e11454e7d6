//! Where the classifier finds kernel state that `__sk_buff` does not expose.
//!
//! The loader resolves these offsets from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`) and hands them to the program as a read-only
//! global; the verifier then sees them as constants. They are never
//! hard-coded: `struct sk_buff` changes between kernel builds.

/// `ip_summed` value of an skb whose checksum the device must finish
/// (include/linux/skbuff.h; unchanged since Linux 2.6).
pub const CHECKSUM_PARTIAL: u8 = 3;

/// The layout below was resolved and may be used.
pub const LAYOUT_VALID: u32 = 1 << 0;
/// `csum_start`/`csum_offset`/`head`/`data` were resolved: the program checks
/// that the kernel would finish the checksum exactly at the UDP check field.
pub const LAYOUT_HAS_CSUM_START: u32 = 1 << 1;

/// Byte offsets into `struct sk_buff` / `struct net_device` for this kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `sk_buff.dev` (a `struct net_device *`).
    pub skb_dev: u32,
    /// The byte of `sk_buff` that holds the `ip_summed` bitfield.
    pub skb_ip_summed: u32,
    /// Bit position of `ip_summed` inside that byte.
    pub ip_summed_shift: u32,
    /// Mask of `ip_summed` after shifting (`0b11` for a 2-bit field).
    pub ip_summed_mask: u32,
    /// `sk_buff.head` (`unsigned char *`).
    pub skb_head: u32,
    /// `sk_buff.data` (`unsigned char *`).
    pub skb_data: u32,
    /// `sk_buff.csum_start` (`__u16`, from `head`).
    pub skb_csum_start: u32,
    /// `sk_buff.csum_offset` (`__u16`, from `csum_start`).
    pub skb_csum_offset: u32,
    /// `net_device.features` (`netdev_features_t`, 64 bits).
    pub dev_features: u32,
    /// `net_device.nd_net`: the `struct net *` of the device's network
    /// namespace (inside `possible_net_t`).
    pub dev_nd_net: u32,
    /// `net.net_cookie` (`u64`): what `SO_NETNS_COOKIE` returns in userspace.
    pub net_cookie: u32,
    /// [`LAYOUT_VALID`] and friends.
    pub flags: u32,
    /// Feature bits that mean "can checksum IPv4 UDP":
    /// `NETIF_F_IP_CSUM | NETIF_F_HW_CSUM`.
    pub csum_features: u64,
    /// Feature bits that mean "can checksum IPv6 UDP":
    /// `NETIF_F_IPV6_CSUM | NETIF_F_HW_CSUM`.
    pub csum6_features: u64,
}

impl KernelLayout {
    /// Extracts `ip_summed` from the byte at [`Self::skb_ip_summed`].
    #[inline(always)]
    pub fn ip_summed(&self, byte: u8) -> u8 {
        ((u32::from(byte) >> (self.ip_summed_shift & 7)) & self.ip_summed_mask) as u8
    }

    /// Whether a device with `features` completes IPv4 UDP checksums itself.
    #[inline(always)]
    pub fn offloads_checksum(&self, features: u64) -> bool {
        features & self.csum_features != 0
    }

    /// Whether a device with `features` completes IPv6 UDP checksums itself.
    #[inline(always)]
    pub fn offloads_checksum6(&self, features: u64) -> bool {
        features & self.csum6_features != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: plain #[repr(C)] integers laid out without padding (12 x u32, then
// two u64 at offsets 48 and 56), every bit pattern valid.
unsafe impl aya::Pod for KernelLayout {}

/// `skb->mark` bits honoured only by a program loaded for `BPF_PROG_TEST_RUN`
/// (global `DHCPFIX_TEST_MODE` = 1): a test run cannot make a
/// `CHECKSUM_PARTIAL` skb on an offloading device, so the test says which
/// case to exercise. Production loads set the global to 0 and the verifier
/// prunes the branch.
pub const TEST_MARK_PARTIAL: u32 = 1 << 0;
/// See [`TEST_MARK_PARTIAL`]: the device offloads checksums.
pub const TEST_MARK_OFFLOAD: u32 = 1 << 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_summed_bits() {
        // Linux 6.18: bits 5-6 of byte 128.
        let l = KernelLayout {
            ip_summed_shift: 5,
            ip_summed_mask: 3,
            csum_features: (1 << 1) | (1 << 3),
            ..Default::default()
        };
        assert_eq!(l.ip_summed(0b0110_0000), CHECKSUM_PARTIAL);
        assert_eq!(l.ip_summed(0b1001_1111), 0);
        assert!(l.offloads_checksum(1 << 3));
        assert!(!l.offloads_checksum(1 << 4));
        assert_eq!(core::mem::size_of::<KernelLayout>(), 64);
    }
}
