//! The key of every per-interface map: an interface is its network
//! namespace and its ifindex there. Two pods each have a tap with ifindex 3;
//! their keys differ by namespace.

/// One interface, across network namespaces (map key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceKey {
    /// The kernel's cookie of the interface's network namespace
    /// (`net->net_cookie`; userspace reads it with `SO_NETNS_COOKIE`). Cookies
    /// are never reused while the kernel runs, so a namespace created after
    /// another was deleted never inherits its entries.
    pub netns: u64,
    /// The interface's index inside that namespace.
    pub ifindex: u32,
    /// Zero.
    pub reserved: u32,
}

impl IfaceKey {
    #[inline(always)]
    pub const fn new(netns: u64, ifindex: u32) -> Self {
        Self {
            netns,
            ifindex,
            reserved: 0,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] u64 then two u32 (16 bytes, no padding); every bit
// pattern is valid.
unsafe impl aya::Pod for IfaceKey {}

#[cfg(test)]
mod tests {
    #[test]
    fn record_has_no_padding() {
        assert_eq!(core::mem::size_of::<super::IfaceKey>(), 16);
    }
}
