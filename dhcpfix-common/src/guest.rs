//! What the classifier keeps about each guest's DHCP conversation, seen
//! from both sides of its tap: the requests it sends (ingress) and the
//! replies that reach it (egress). From these, userspace tells whether a
//! guest is bound, renewing, about to lose its lease, or throwing replies
//! away ([`GuestState::state`]).
//!
//! Times are `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`), 0 for
//! "never".

use crate::dhcp::{self, Message, Options, Role, FAMILY_V6, OPTIONS_LEN};

/// Guests tracked per interface and IP family: the slot is picked from the
/// MAC, so a guest sending from random MACs churns only its own
/// interface's slots, and the map cannot fill up before every interface
/// has all of its slots.
pub const SLOTS_PER_INTERFACE: u32 = 4;
/// Entries of the guests map: every slot of both families of every
/// interface the configuration map can hold.
pub const MAX_GUESTS: u32 = crate::MAX_INTERFACES * SLOTS_PER_INTERFACE * 2;

/// A request that reaches the tap less than this after a reply crossed it
/// on the way (the guest sent it before the reply came): it is no sign of
/// the reply thrown away. Retransmission timers start at a second or more
/// (RFC 2131: 4 s; RFC 8415: SOL_TIMEOUT 1 s less 10 %), the way from the
/// tap to the guest and back takes well under a millisecond.
pub const CROSSING_NS: u64 = 250_000_000;

/// [`GuestState::flags`]: the guest declined the address.
pub const GUEST_DECLINED: u8 = 1 << 0;
/// The server said no (NAK, or a DHCPv6 REPLY without an address).
pub const GUEST_NAK: u8 = 1 << 1;
/// The guest released its lease.
pub const GUEST_RELEASED: u8 = 1 << 2;

/// Key of the guests map: an interface and one of its slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuestKey {
    pub netns: u64,
    pub ifindex: u32,
    /// `family_slot`: the family (4 or 6) in the high byte, the slot below.
    pub slot: u32,
}

impl GuestKey {
    /// The slot of `mac` on the interface (netns, ifindex), for `family`.
    #[inline(always)]
    pub fn new(netns: u64, ifindex: u32, family: u8, mac: &[u8; 6]) -> Self {
        // FNV-1a over the MAC: cheap, and spreads MACs that differ in any byte.
        let mut h: u32 = 0x811c_9dc5;
        let mut i = 0;
        while i < 6 {
            h = (h ^ u32::from(mac[i])).wrapping_mul(0x0100_0193);
            i += 1;
        }
        Self {
            netns,
            ifindex,
            slot: (u32::from(family) << 24) | (h % SLOTS_PER_INTERFACE),
        }
    }

    pub fn family(&self) -> u8 {
        (self.slot >> 24) as u8
    }
}

/// One guest (map value).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestState {
    /// When the current transaction's first request was seen.
    pub xid_start: u64,
    pub last_request: u64,
    pub last_reply: u64,
    pub last_ack: u64,
    /// The guest's current transaction.
    pub xid: u32,
    /// The transaction of the last reply that reached the guest.
    pub reply_xid: u32,
    /// Requests since the last ACK.
    pub requests: u32,
    /// Requests of the current transaction that repeat one whose reply
    /// reached the guest: replies it threw away.
    pub repeats: u32,
    /// All such repeats since the guest was first seen.
    pub rejected: u32,
    /// Zero.
    pub reserved: u32,
    /// The guest's MAC (the slot may have held another before).
    pub mac: [u8; 6],
    pub family: u8,
    /// [`GUEST_DECLINED`] and friends.
    pub flags: u8,
    /// Roles ([`Role`]) of the last reply and the last request.
    pub reply_role: u8,
    pub request_role: u8,
    /// Bytes kept of the last request's and of the last ACK's (or, before
    /// any, OFFER's) options.
    pub request_options_len: u8,
    pub reply_options_len: u8,
    /// A v4 reply's `yiaddr` (from the last OFFER or ACK).
    pub addr: [u8; 4],
    /// The first [`OPTIONS_LEN`] bytes of those options, as sent: userspace
    /// reads lease times, host name and vendor class from them.
    pub request_options: [u8; OPTIONS_LEN],
    pub reply_options: [u8; OPTIONS_LEN],
}

impl Default for GuestState {
    fn default() -> Self {
        Self {
            xid_start: 0,
            last_request: 0,
            last_reply: 0,
            last_ack: 0,
            xid: 0,
            reply_xid: 0,
            requests: 0,
            repeats: 0,
            rejected: 0,
            reserved: 0,
            mac: [0; 6],
            family: 0,
            flags: 0,
            reply_role: 0,
            request_role: 0,
            request_options_len: 0,
            reply_options_len: 0,
            addr: [0; 4],
            request_options: [0; OPTIONS_LEN],
            reply_options: [0; OPTIONS_LEN],
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] integers and byte arrays laid out without padding
// (checked by `record_sizes`); every bit pattern is valid.
unsafe impl aya::Pod for GuestState {}
#[cfg(feature = "user")]
// SAFETY: #[repr(C)] u64 then two u32, no padding; every bit pattern valid.
unsafe impl aya::Pod for GuestKey {}

/// What a person calls a guest's DHCP state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Asked, no reply yet.
    Requesting,
    /// Replies for its transaction reached it, and it keeps asking with
    /// the same one: its client throws them away.
    Rejecting,
    Bound,
    /// Past T1.
    Renewing,
    /// Past T2: any server may answer now.
    Rebinding,
    /// Lease time over, no new ACK.
    Expired,
    Declined,
    Nak,
    Released,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            Self::Requesting => "requesting",
            Self::Rejecting => "rejecting",
            Self::Bound => "bound",
            Self::Renewing => "renewing",
            Self::Rebinding => "rebinding",
            Self::Expired => "expired",
            Self::Declined => "declined",
            Self::Nak => "nak",
            Self::Released => "released",
        }
    }

    pub const ALL: [State; 9] = [
        Self::Requesting,
        Self::Rejecting,
        Self::Bound,
        Self::Renewing,
        Self::Rebinding,
        Self::Expired,
        Self::Declined,
        Self::Nak,
        Self::Released,
    ];
}

const NS: u64 = 1_000_000_000;

impl GuestState {
    /// Records a message the guest sent at `now`.
    ///
    /// A request counts as a repeat (a reply thrown away) when it asks
    /// again, in the same transaction and the same words, what a reply that
    /// reached the guest since its last request answered (and not so soon
    /// after it that the two crossed: [`CROSSING_NS`]). The count starts
    /// over when the guest moves on: another transaction, another message
    /// (a REQUEST after OFFERs: it took one), or a DHCPv4 REQUEST from an
    /// address of its own (`ciaddr`), which renews or rebinds a lease the
    /// guest took. ISC dhclient keeps the transaction id of its first
    /// exchange for every renewal, so without that last rule each renewal
    /// would look like an ACK thrown away. (The price: a renewing guest
    /// that throws its renewal's ACK away is not seen rejecting; it shows
    /// as bound, asking again and again.)
    #[inline(always)]
    pub fn on_request(&mut self, now: u64, m: &Message) {
        let reply = Role::from_raw(self.reply_role);
        // A reply came after the last request, or that request crossed it;
        // and this one did not.
        let answered = self.last_reply != 0
            && (self.last_reply > self.last_request || self.last_request - self.last_reply < CROSSING_NS);
        let replied_since = answered && now.saturating_sub(self.last_reply) >= CROSSING_NS;
        let renewing = m.family == crate::dhcp::FAMILY_V4 && m.role == Role::Request && m.addr != [0; 4];
        let same = m.xid == self.xid && m.role as u8 == self.request_role;
        if !same || renewing {
            self.repeats = 0;
        } else if m.xid == self.reply_xid && replied_since && reply.answers(m.role) {
            self.repeats = self.repeats.saturating_add(1);
            self.rejected = self.rejected.saturating_add(1);
        }
        if m.xid != self.xid || self.xid_start == 0 {
            self.xid_start = now;
        }
        self.xid = m.xid;
        self.mac = m.client;
        self.family = m.family;
        self.last_request = now;
        self.request_role = m.role as u8;
        self.requests = self.requests.saturating_add(1);
        match m.role {
            Role::Decline => self.flags |= GUEST_DECLINED,
            Role::Release => self.flags |= GUEST_RELEASED,
            Role::Discover | Role::Request => self.flags &= !(GUEST_DECLINED | GUEST_RELEASED),
            _ => {}
        }
    }

    /// Records a reply that reached the guest at `now`. Whether its options
    /// are kept is the caller's (an OFFER's only until the first ACK, an
    /// ACK's always: [`Self::keeps_reply_options`]).
    #[inline(always)]
    pub fn on_reply(&mut self, now: u64, m: &Message) {
        self.mac = m.client;
        self.family = m.family;
        self.last_reply = now;
        self.reply_xid = m.xid;
        self.reply_role = m.role as u8;
        match m.role {
            Role::Offer => self.addr = m.addr,
            Role::Ack => {
                self.addr = m.addr;
                self.last_ack = now;
                self.requests = 0;
                self.flags &= !(GUEST_NAK | GUEST_DECLINED | GUEST_RELEASED);
            }
            Role::Nak => self.flags |= GUEST_NAK,
            _ => {}
        }
    }

    /// Whether a reply's options replace the ones kept.
    #[inline(always)]
    pub fn keeps_reply_options(&self, role: Role) -> bool {
        role == Role::Ack || (role == Role::Offer && self.last_ack == 0)
    }

    /// The options kept of the last ACK (or OFFER), read.
    pub fn reply(&self) -> Options<'_> {
        let opts = &self.reply_options[..usize::from(self.reply_options_len).min(OPTIONS_LEN)];
        if self.family == FAMILY_V6 {
            dhcp::options_v6(opts)
        } else {
            dhcp::options_v4(opts)
        }
    }

    /// The options kept of the last request, read.
    pub fn request(&self) -> Options<'_> {
        let opts = &self.request_options[..usize::from(self.request_options_len).min(OPTIONS_LEN)];
        if self.family == FAMILY_V6 {
            dhcp::options_v6(opts)
        } else {
            dhcp::options_v4(opts)
        }
    }

    /// Lease, T1 and T2 as the client uses them, seconds: from the ACK,
    /// else the RFC 2131 defaults (half and seven eighths of the lease).
    pub fn times(&self) -> (u64, u64, u64) {
        let o = self.reply();
        let lease = u64::from(o.lease.unwrap_or(0));
        let t1 = o.t1.filter(|t| *t != 0).map_or(lease / 2, u64::from);
        let t2 = o.t2.filter(|t| *t != 0).map_or(lease * 7 / 8, u64::from);
        (lease, t1, t2)
    }

    /// Whether the lease is infinite (0xffffffff seconds).
    pub fn infinite(&self) -> bool {
        self.reply().lease == Some(u32::MAX)
    }

    /// Seconds left on the lease at `now`; `None` without one (or infinite).
    pub fn remaining(&self, now: u64) -> Option<i64> {
        if self.last_ack == 0 || self.infinite() {
            return None;
        }
        let age = now.saturating_sub(self.last_ack) / NS;
        Some(self.times().0 as i64 - age as i64)
    }

    /// The address the guest has or was offered.
    pub fn address(&self) -> Option<[u8; 16]> {
        if self.family == FAMILY_V6 {
            return self.reply().addr;
        }
        (self.addr != [0; 4]).then(|| {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&self.addr);
            a
        })
    }

    /// The guest's state at `now`.
    pub fn state(&self, now: u64) -> State {
        let asking_since_ack = self.last_request > self.last_ack;
        if self.flags & GUEST_RELEASED != 0 && asking_since_ack {
            return State::Released;
        }
        if self.flags & GUEST_DECLINED != 0 && asking_since_ack {
            return State::Declined;
        }
        if self.repeats > 0 && asking_since_ack {
            return State::Rejecting;
        }
        // A DHCPv6 REPLY without an address says no, as a NAK does.
        // (Only when all its options were kept: the address may lie beyond.)
        let v6_no = self.family == FAMILY_V6
            && self.last_ack != 0
            && usize::from(self.reply_options_len) < OPTIONS_LEN
            && self.reply().addr.is_none();
        if (self.flags & GUEST_NAK != 0 || v6_no) && self.last_reply >= self.last_request {
            return State::Nak;
        }
        if self.last_ack == 0 {
            return State::Requesting;
        }
        if self.infinite() {
            return State::Bound;
        }
        let (lease, t1, t2) = self.times();
        let age = now.saturating_sub(self.last_ack) / NS;
        if age >= lease {
            State::Expired
        } else if age >= t2 {
            State::Rebinding
        } else if age >= t1 {
            State::Renewing
        } else {
            State::Bound
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::FAMILY_V4;

    fn msg(role: Role, xid: u32) -> Message {
        Message {
            family: FAMILY_V4,
            role,
            xid,
            client: [0x52, 0x54, 0, 1, 2, 3],
            // yiaddr of a reply; a request from a client without an address.
            addr: if role.from_client() { [0; 4] } else { [10, 0, 0, 5] },
            ..Default::default()
        }
    }

    /// A reply as the classifier records it, with a lease of `lease` s.
    fn reply(g: &mut GuestState, now: u64, role: Role, xid: u32, lease: u32) {
        let m = msg(role, xid);
        g.on_reply(now, &m);
        if g.keeps_reply_options(role) {
            let opts = [
                51,
                4,
                (lease >> 24) as u8,
                (lease >> 16) as u8,
                (lease >> 8) as u8,
                lease as u8,
                255,
            ];
            g.reply_options[..opts.len()].copy_from_slice(&opts);
            g.reply_options_len = opts.len() as u8;
        }
    }

    const S: u64 = NS;

    #[test]
    fn record_sizes() {
        assert_eq!(core::mem::size_of::<GuestKey>(), 16);
        assert_eq!(
            core::mem::size_of::<GuestState>(),
            32 + 24 + 12 + 4 + 2 * OPTIONS_LEN
        );
    }

    #[test]
    fn slots_stay_on_their_interface() {
        let a = GuestKey::new(9, 3, 4, &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!((a.netns, a.ifindex, a.family()), (9, 3, 4));
        assert!(a.slot & 0xff_ffff < SLOTS_PER_INTERFACE);
        let b = GuestKey::new(9, 3, 6, &[0x52, 0x54, 0, 1, 2, 3]);
        assert_ne!(a, b, "families are kept apart");
    }

    #[test]
    fn a_normal_exchange_then_renewal_rebinding_expiry() {
        let mut g = GuestState::default();
        g.on_request(S, &msg(Role::Discover, 7));
        assert_eq!(g.state(S), State::Requesting);
        reply(&mut g, 2 * S, Role::Offer, 7, 120);
        g.on_request(3 * S, &msg(Role::Request, 7));
        assert_eq!(g.repeats, 0, "a REQUEST after an OFFER is no repeat");
        reply(&mut g, 4 * S, Role::Ack, 7, 120);
        assert_eq!(g.address().map(|a| [a[0], a[1], a[2], a[3]]), Some([10, 0, 0, 5]));
        assert_eq!(g.state(5 * S), State::Bound);
        assert_eq!(g.remaining(14 * S), Some(110));
        assert_eq!(g.state(64 * S), State::Renewing);
        assert_eq!(g.state(110 * S), State::Rebinding);
        assert_eq!(g.state(124 * S), State::Expired);
        // A renewal with a new transaction and its ACK: a fresh lease.
        g.on_request(70 * S, &msg(Role::Request, 8));
        reply(&mut g, 71 * S, Role::Ack, 8, 120);
        assert_eq!(g.state(124 * S), State::Bound);
        assert_eq!(g.rejected, 0);
    }

    #[test]
    fn a_client_that_throws_replies_away() {
        let mut g = GuestState::default();
        g.on_request(S, &msg(Role::Discover, 7));
        reply(&mut g, 2 * S, Role::Offer, 7, 120);
        // The OFFER's checksum was bad: DISCOVER again, same transaction.
        g.on_request(5 * S, &msg(Role::Discover, 7));
        reply(&mut g, 6 * S, Role::Offer, 7, 120);
        g.on_request(9 * S, &msg(Role::Discover, 7));
        assert_eq!((g.repeats, g.rejected), (2, 2));
        assert_eq!(
            (g.xid_start, g.last_request),
            (S, 9 * S),
            "one transaction, 8 s long"
        );
        assert_eq!(g.state(10 * S), State::Rejecting);
        // Retransmitting without a reply in between is not rejecting.
        let mut h = GuestState::default();
        h.on_request(S, &msg(Role::Discover, 9));
        h.on_request(4 * S, &msg(Role::Discover, 9));
        assert_eq!(h.state(5 * S), State::Requesting);
    }

    /// ISC dhclient renews (and rebinds) with the transaction id of its
    /// first exchange, from the address it holds (ciaddr): as seen in the
    /// lab, with dnsmasq (T1 6 s) and with udhcpd stopped after the ACK.
    #[test]
    fn renewals_in_the_first_transaction_are_not_rejections() {
        let renew = |xid| Message {
            addr: [10, 0, 0, 5],
            ..msg(Role::Request, xid)
        };
        let mut g = GuestState::default();
        g.on_request(S, &msg(Role::Discover, 7));
        reply(&mut g, S + 1, Role::Offer, 7, 20);
        g.on_request(S + 2, &msg(Role::Request, 7));
        reply(&mut g, S + 3, Role::Ack, 7, 20);
        assert_eq!(g.state(2 * S), State::Bound);
        // T1: a renewal, same transaction; the server answers.
        g.on_request(10 * S + 3, &renew(7));
        assert_eq!((g.state(11 * S + 3), g.repeats), (State::Renewing, 0));
        reply(&mut g, 10 * S + 4, Role::Ack, 7, 20);
        assert_eq!((g.state(11 * S), g.rejected), (State::Bound, 0));
        // Next renewal; the server is gone now: renewing, rebinding (the
        // REQUESTs broadcast, still from the address), expired.
        for t in 20..30 {
            g.on_request(t * S, &renew(7));
            assert_eq!(g.repeats, 0, "at {t} s");
        }
        assert_eq!(g.state(21 * S), State::Renewing);
        assert_eq!(g.state(28 * S), State::Rebinding);
        assert_eq!(g.state(31 * S), State::Expired);
        assert_eq!(g.rejected, 0);
        // Then it starts over: DISCOVERs of a new transaction, unanswered.
        g.on_request(31 * S, &msg(Role::Discover, 8));
        g.on_request(32 * S, &msg(Role::Discover, 8));
        assert_eq!((g.state(33 * S), g.rejected), (State::Expired, 0));
    }

    /// OFFERs thrown away, then one taken (the fix came in): the REQUEST
    /// that follows is progress, not rejection.
    #[test]
    fn a_request_after_rejected_offers_starts_the_count_over() {
        let mut g = GuestState::default();
        g.on_request(S, &msg(Role::Discover, 7));
        reply(&mut g, 2 * S, Role::Offer, 7, 120);
        g.on_request(3 * S, &msg(Role::Discover, 7));
        assert_eq!(g.state(3 * S), State::Rejecting);
        reply(&mut g, 4 * S, Role::Offer, 7, 120);
        g.on_request(4 * S + 1, &msg(Role::Request, 7));
        assert_eq!((g.state(5 * S), g.repeats, g.rejected), (State::Requesting, 0, 1));
        // Its ACK thrown away too: REQUEST again, without an address.
        reply(&mut g, 5 * S, Role::Ack, 7, 120);
        g.on_request(6 * S, &msg(Role::Request, 7));
        assert_eq!((g.state(6 * S), g.repeats, g.rejected), (State::Rejecting, 1, 2));
    }

    /// A retransmission sent just before the reply came (ISC dhclient with
    /// a one-second backoff cutoff retransmits at once, seen in the lab) is
    /// no rejection; the next one, a second later, is.
    #[test]
    fn a_request_that_crossed_the_reply_is_no_rejection() {
        let mut g = GuestState::default();
        g.on_request(S, &msg(Role::Discover, 7));
        reply(&mut g, 2 * S, Role::Offer, 7, 120);
        g.on_request(2 * S + 1_000_000, &msg(Role::Discover, 7));
        assert_eq!((g.state(3 * S), g.rejected), (State::Requesting, 0));
        g.on_request(3 * S, &msg(Role::Discover, 7));
        assert_eq!((g.state(3 * S), g.rejected), (State::Rejecting, 1));
    }

    #[test]
    fn declines_naks_releases_and_infinite_leases() {
        let mut g = GuestState::default();
        g.on_request(S, &msg(Role::Request, 1));
        reply(&mut g, 2 * S, Role::Nak, 1, 0);
        assert_eq!(g.state(3 * S), State::Nak);
        g.on_request(4 * S, &msg(Role::Decline, 1));
        assert_eq!(g.state(5 * S), State::Declined);
        let mut g = GuestState::default();
        g.on_request(S, &msg(Role::Request, 1));
        reply(&mut g, 2 * S, Role::Ack, 1, u32::MAX);
        assert_eq!(g.state(1_000_000 * S), State::Bound);
        assert_eq!(g.remaining(3 * S), None);
        g.on_request(3 * S, &msg(Role::Release, 2));
        assert_eq!(g.state(4 * S), State::Released);
    }
}
