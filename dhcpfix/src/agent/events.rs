//! The classifier's fill events (a ring buffer), one log line each.

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{MapData, RingBuf};
use dhcpfix_common::event::{message_type_name, FillEvent, EVENT_WOULD_FILL};

use crate::pins::{self, PinDir, PinsError};

/// The pinned ring buffer, read by one agent at a time.
pub struct EventStream {
    ring: RingBuf<MapData>,
    /// The map's kernel id, to notice a program loaded anew.
    id: Option<u32>,
}

impl EventStream {
    pub fn open(pins: &PinDir) -> Result<Self, PinsError> {
        let ring = pins::maps::events(pins)?;
        Ok(Self {
            ring,
            id: pins::maps::events_id(pins),
        })
    }

    /// Whether this is still the pinned ring buffer (`clean --all` and a
    /// new load replace it).
    pub fn is_current(&self, pins: &PinDir) -> bool {
        self.id.is_some() && pins::maps::events_id(pins) == self.id
    }

    /// Logs every queued event; `name` turns an ifindex into a name.
    /// Returns how many there were.
    pub fn drain(&mut self, name: impl Fn(u32) -> String) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            n += 1;
            match decode(&item) {
                Some(event) => log::info!("{}", describe(&event, &name(event.ifindex))),
                None => log::debug!("ignored a {}-byte event record", item.len()),
            }
        }
        n
    }
}

impl AsFd for EventStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

/// A record as the classifier wrote it (native byte order).
pub fn decode(bytes: &[u8]) -> Option<FillEvent> {
    if bytes.len() < size_of::<FillEvent>() {
        return None;
    }
    // SAFETY: at least size_of::<FillEvent>() bytes are readable, the read
    // is unaligned-safe, and every bit pattern is a valid FillEvent (Pod).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FillEvent>()) })
}

/// `filled vnet0: DHCPACK xid 0x3903f326 for 52:54:00:12:34:56 (port 68)`
pub fn describe(e: &FillEvent, iface: &str) -> String {
    let what = if e.outcome == EVENT_WOULD_FILL {
        "would fill"
    } else {
        "filled"
    };
    let kind = match message_type_name(e.msg_type) {
        Some(name) => name.to_owned(),
        None if e.msg_type == 0 => "DHCP (type unknown)".to_owned(),
        None => format!("DHCP type {}", e.msg_type),
    };
    let m = e.mac;
    format!(
        "{what} {iface}: {kind} xid {:#010x} for {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} (port {})",
        e.xid, m[0], m[1], m[2], m[3], m[4], m[5], e.dport
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcpfix_common::event::EVENT_FILLED;

    #[test]
    fn one_line_per_event() {
        let e = FillEvent {
            netns: 4096,
            ifindex: 7,
            xid: 0x3903_f326,
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            msg_type: 5,
            outcome: EVENT_FILLED,
            dport: 68,
            reserved: 0,
            reserved2: 0,
        };
        assert_eq!(
            describe(&e, "vnet0"),
            "filled vnet0: DHCPACK xid 0x3903f326 for 52:54:00:12:34:56 (port 68)"
        );
        let audit = FillEvent {
            outcome: EVENT_WOULD_FILL,
            msg_type: 0,
            ..e
        };
        assert!(describe(&audit, "tap1i0").starts_with("would fill tap1i0: DHCP (type unknown)"));

        let bytes: Vec<u8> = 4096u64
            .to_ne_bytes()
            .into_iter()
            .chain(7u32.to_ne_bytes())
            .chain(0x3903_f326u32.to_ne_bytes())
            .chain([0x52, 0x54, 0, 0x12, 0x34, 0x56, 5, EVENT_FILLED])
            .chain(68u16.to_ne_bytes())
            .chain([0; 6])
            .collect();
        assert_eq!(decode(&bytes), Some(e));
        assert_eq!(decode(&bytes[..31]), None);
    }
}
