//! Per-interface outcome counters, one record per CPU, summed by readers.

/// What the classifier did with the DHCP-port UDP packets of one interface.
///
/// `seen` counts every IPv4 UDP packet to a configured DHCP port; each such
/// packet also lands in exactly one of the other counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Counters {
    /// DHCP-port UDP packets examined.
    pub seen: u64,
    /// Partial checksums completed in place (mode `fill`).
    pub filled: u64,
    /// Partial checksums that would have been completed (mode `audit`).
    pub would_fill: u64,
    /// Checksum already complete (skb not `CHECKSUM_PARTIAL`): left alone.
    pub valid: u64,
    /// Partial, but the device has no checksum offload: the kernel completes
    /// it itself after the program, so it is left alone.
    pub deferred: u64,
    /// Not safe to touch (fragment, GSO, bad lengths, too large, checksum
    /// not where expected): left alone.
    pub skipped: u64,
    /// A helper failed: left alone.
    pub errors: u64,
}

/// Which counter a packet's outcome lands in.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Filled,
    WouldFill,
    Valid,
    Deferred,
    Skipped,
    Error,
}

impl Counters {
    /// Records one examined packet and its outcome.
    #[inline(always)]
    pub fn record(&mut self, outcome: Outcome) {
        self.seen += 1;
        match outcome {
            Outcome::Filled => self.filled += 1,
            Outcome::WouldFill => self.would_fill += 1,
            Outcome::Valid => self.valid += 1,
            Outcome::Deferred => self.deferred += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::Error => self.errors += 1,
        }
    }

    /// The counter names, in record order (as `stats --json` spells them).
    pub const NAMES: [&'static str; 7] = [
        "seen",
        "filled",
        "would_fill",
        "valid",
        "deferred",
        "skipped",
        "errors",
    ];

    /// The counter values, in the order of [`Self::NAMES`].
    pub fn values(&self) -> [u64; 7] {
        [
            self.seen,
            self.filled,
            self.would_fill,
            self.valid,
            self.deferred,
            self.skipped,
            self.errors,
        ]
    }

    /// Adds another record (another CPU's share) to this one.
    pub fn add(&mut self, other: &Counters) {
        self.seen += other.seen;
        self.filled += other.filled;
        self.would_fill += other.would_fill;
        self.valid += other.valid;
        self.deferred += other.deferred;
        self.skipped += other.skipped;
        self.errors += other.errors;
    }
}

#[cfg(feature = "user")]
// SAFETY: plain #[repr(C)] integers, no padding, every bit pattern valid.
unsafe impl aya::Pod for Counters {}
