//! The classifier's fill events (a ring buffer), one log line each, within
//! limits: one guest can send partial DHCP broadcasts that are filled on
//! every other tap, and a log line per packet would flood the journal and
//! hold up the agent. So at most [`LINES_PER_WINDOW`] lines per interface and
//! client MAC per [`WINDOW`], then one "suppressed N" line; and at most
//! [`MAX_PER_DRAIN`] records per wake-up, so link events are never held up
//! behind a burst.

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use dhcpfix_common::{
    dhcp::{message_type_name, message_type_name_v6, FAMILY_V6},
    event::{FillEvent, EVENT_WOULD_FILL},
    key::IfaceKey,
};

use crate::{
    netdev::format_mac,
    pins::{self, PinDir, PinsError},
};

/// Lines per interface and MAC per window.
pub const LINES_PER_WINDOW: u32 = 5;
/// The rate limit's window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Records read per wake-up; the rest wait for the next turn of the loop.
pub const MAX_PER_DRAIN: usize = 1024;
/// Interface/MAC pairs remembered; windows that ended are dropped first.
const MAX_TRACKED: usize = 4096;

struct Window {
    started: Instant,
    shown: u32,
    suppressed: u64,
    /// How the interface reads, for the "suppressed" line.
    iface: String,
}

/// The pinned ring buffer, read by one agent at a time.
pub struct EventStream {
    ring: RingBuf<MapData>,
    /// The map's kernel id, to notice a program loaded anew.
    id: Option<u32>,
    windows: HashMap<(IfaceKey, [u8; 6]), Window>,
}

impl EventStream {
    pub fn open(pins: &PinDir) -> Result<Self, PinsError> {
        Ok(Self {
            ring: pins::maps::events(pins)?,
            id: pins::maps::events_id(pins),
            windows: HashMap::new(),
        })
    }

    /// Whether this is still the pinned ring buffer (`clean --all` and a
    /// new load replace it).
    pub fn is_current(&self, pins: &PinDir) -> bool {
        self.id.is_some() && pins::maps::events_id(pins) == self.id
    }

    /// Logs the queued events (at most `max`); `name` says how an
    /// interface reads in the log. Returns how many records were read.
    pub fn drain(&mut self, max: usize, name: impl Fn(&IfaceKey) -> String) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.ring.next() else { break };
            n += 1;
            let Some(event) = decode(&item) else {
                log::debug!("ignored a {}-byte event record", item.len());
                continue;
            };
            drop(item);
            let key = IfaceKey::new(event.netns, event.ifindex);
            let now = Instant::now();
            if self.windows.len() >= MAX_TRACKED {
                self.flush(now);
            }
            let window = self.windows.entry((key, event.mac)).or_insert_with(|| Window {
                started: now,
                shown: 0,
                suppressed: 0,
                iface: name(&key),
            });
            if now.duration_since(window.started) >= WINDOW {
                report_suppressed(window, &event.mac);
                window.started = now;
                window.shown = 0;
            }
            if window.shown < LINES_PER_WINDOW {
                window.shown += 1;
                log::info!("{}", describe(&event, &window.iface));
            } else {
                window.suppressed += 1;
            }
        }
        n
    }

    /// Reports the windows that ended with lines suppressed, and forgets
    /// them (call it now and then).
    pub fn flush(&mut self, now: Instant) {
        self.windows.retain(|(_, mac), w| {
            if now.duration_since(w.started) < WINDOW {
                return true;
            }
            report_suppressed(w, mac);
            false
        });
    }
}

fn report_suppressed(w: &mut Window, mac: &[u8; 6]) {
    if w.suppressed > 0 {
        log::info!(
            "{}: {} more fill events for {} in {} s not logged (at most {LINES_PER_WINDOW} per {} s)",
            w.iface,
            w.suppressed,
            format_mac(mac),
            WINDOW.as_secs(),
            WINDOW.as_secs()
        );
        w.suppressed = 0;
    }
}

impl AsRawFd for EventStream {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_fd().as_raw_fd()
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
    let name = if e.family == FAMILY_V6 {
        message_type_name_v6(e.msg_type).map(|n| format!("DHCPv6 {n}"))
    } else {
        message_type_name(e.msg_type).map(str::to_owned)
    };
    let kind = match name {
        Some(name) => name,
        None if e.msg_type == 0 => "DHCP (type unknown)".to_owned(),
        None => format!("DHCP type {}", e.msg_type),
    };
    format!(
        "{what} {iface}: {kind} xid {:#010x} for {} (port {})",
        e.xid,
        format_mac(&e.mac),
        e.dport
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
            family: 4,
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
            .chain([4, 0, 0, 0, 0, 0])
            .collect();
        assert_eq!(decode(&bytes), Some(e));
        assert_eq!(decode(&bytes[..31]), None);
    }
}
