//! Switches the loader flips while the program runs (the one entry of the
//! `DHCPFIX_SETTINGS` array). Globals would need a new load to change.

/// [`Settings::flags`]: explain skipped packets and helper errors through
/// aya-log (`dhcpfix run` sets it at debug level and clears it on exit).
pub const SETTING_EXPLAIN: u32 = 1 << 0;

/// The settings record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// [`SETTING_EXPLAIN`].
    pub flags: u32,
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] u32; every bit pattern is valid.
unsafe impl aya::Pod for Settings {}
