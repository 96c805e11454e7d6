//! dhcpfix: fill in the UDP checksum of DHCP packets leaving a guest's tap.
//!
//! Attached at TC egress (tcx, or clsact) of a tap. For each IPv4 UDP packet
//! to a watched port it decides, from the skb's `ip_summed` and the device's
//! checksum features (read through offsets the loader resolved from BTF):
//!
//! | skb                    | device offload | action                        |
//! |------------------------|----------------|-------------------------------|
//! | not `CHECKSUM_PARTIAL` | any            | leave (`valid`)               |
//! | partial                | none           | leave: the kernel completes it (`deferred`) |
//! | partial                | IP/HW csum     | write the full checksum (`filled`) |
//!
//! It never drops a packet and writes nothing but the two bytes of the UDP
//! check field. Anything unexpected leaves the packet untouched.
//!
//! One loaded program serves every interface of every network namespace:
//! the maps are keyed by [`IfaceKey`], the interface's namespace cookie
//! (read from `skb->dev->nd_net->net_cookie`) and its ifindex. Not
//! `bpf_get_netns_cookie()`: for a tc program it returns the namespace of
//! `skb->sk`, the *sending socket*, or of the initial namespace when there is
//! none (a forwarded frame), not the namespace of the device.
#![no_std]
#![no_main]

use core::ptr;

use aya_ebpf::{
    helpers::generated::{
        bpf_csum_diff, bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use dhcpfix_common::{
    config::{port_bit, IfaceConfig, MODE_AUDIT, MODE_FILL, PORT_BITMAP_WORDS},
    counters::{Counters, Outcome},
    dhcp::{self, Message, Role, FAMILY_V6, OPTIONS_LEN},
    event::{FillEvent, EVENTS_BYTES, EVENT_FILLED, EVENT_WOULD_FILL},
    frame::{
        self, DhcpPacket, Frame, Header, Parsed, SkipReason, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6,
        IPPROTO_UDP, MAX_UDP_LEN, UDP_CHECK_OFFSET,
    },
    guest::{GuestKey, GuestState, MAX_GUESTS},
    key::IfaceKey,
    layout::{
        KernelLayout, CHECKSUM_PARTIAL, LAYOUT_HAS_CSUM_START, LAYOUT_VALID, TEST_MARK_OFFLOAD,
        TEST_MARK_PARTIAL,
    },
    settings::{Settings, SETTING_EXPLAIN},
    MAX_INTERFACES,
};

/// `BPF_F_NO_PREALLOC`: the guests map takes memory as guests appear.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Kernel structure offsets, set by the loader from BTF before loading.
#[unsafe(no_mangle)]
static DHCPFIX_LAYOUT: KernelLayout = KernelLayout {
    skb_dev: 0,
    skb_ip_summed: 0,
    ip_summed_shift: 0,
    ip_summed_mask: 0,
    skb_head: 0,
    skb_data: 0,
    skb_csum_start: 0,
    skb_csum_offset: 0,
    dev_features: 0,
    dev_nd_net: 0,
    net_cookie: 0,
    flags: 0,
    csum_features: 0,
    csum6_features: 0,
};

/// 1 only in programs loaded for `BPF_PROG_TEST_RUN`: take the skb state from
/// `skb->mark` instead of the kernel. Always 0 when attached to an interface.
#[unsafe(no_mangle)]
static DHCPFIX_TEST_MODE: u32 = 0;

#[map(name = "DHCPFIX_CONFIG")]
static CONFIG: HashMap<IfaceKey, IfaceConfig> = HashMap::with_max_entries(MAX_INTERFACES, 0);

#[map(name = "DHCPFIX_COUNTERS")]
static COUNTERS: PerCpuHashMap<IfaceKey, Counters> = PerCpuHashMap::with_max_entries(MAX_INTERFACES, 0);

/// Each guest's DHCP conversation, seen from both sides of its tap (see
/// dhcpfix_common::guest). A few slots per interface, chosen by MAC: a guest
/// sending from random MACs churns only its own interface's slots.
#[map(name = "DHCPFIX_GUESTS")]
static GUESTS: HashMap<GuestKey, GuestState> = HashMap::with_max_entries(MAX_GUESTS, BPF_F_NO_PREALLOC);

/// One all-zero guest record, never written: a new or re-used slot starts
/// as a copy of it (a record on the stack would not fit the 512 bytes).
#[map(name = "DHCPFIX_GUEST0")]
static GUEST_ZERO: Array<GuestState> = Array::with_max_entries(1, 0);

/// Switches set by the loader at run time (one entry): see [`Settings`].
#[map(name = "DHCPFIX_SETTINGS")]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// One [`FillEvent`] per filled (or would-be filled) packet, for the agent's
/// log. Best effort: when it is full, events are skipped, never fills.
#[map(name = "DHCPFIX_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Bytes summed per `bpf_csum_diff` call (the helper's limit is 512).
const CHUNK: u32 = 512;
/// Scratch buffer: one chunk plus a word of zero padding for odd lengths.
#[repr(C)]
pub struct Scratch {
    buf: [u8; CHUNK as usize + 4],
}

/// One bit per UDP port watched on any interface (see `may_be_watched`).
#[map(name = "DHCPFIX_PORTS")]
static PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

#[map(name = "DHCPFIX_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// `TCX_NEXT` / `TC_ACT_UNSPEC`: no verdict, let the next program or the
/// default action decide. dhcpfix never drops or redirects.
const TC_NEXT: i32 = -1;

/// Egress of a guest's tap: what reaches the guest. Fills, counts, and
/// records the replies in the guest's state.
#[classifier]
pub fn dhcpfix(ctx: TcContext) -> i32 {
    classify(&ctx);
    TC_NEXT
}

/// Ingress of a guest's tap: what the guest sends. Only records its DHCP
/// requests in its state; never changes a byte.
#[classifier]
pub fn dhcpfix_ingress(ctx: TcContext) -> i32 {
    watch_requests(&ctx);
    TC_NEXT
}

/// Does nothing: the floor that benchmarks compare the classifier with.
#[classifier]
pub fn dhcpfix_empty(_ctx: TcContext) -> i32 {
    TC_NEXT
}

/// Reads the frame through `bpf_skb_load_bytes`, which also works on the
/// paged part of non-linear skbs.
struct SkbFrame<'a>(&'a TcContext);

impl Frame for SkbFrame<'_> {
    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }

    #[inline(always)]
    fn load<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset as usize).ok()
    }

    #[inline(always)]
    fn header<H: Header>(&self, offset: u32) -> Option<H> {
        self.0.load::<H>(offset as usize).ok()
    }
}

#[inline(always)]
fn classify(ctx: &TcContext) {
    if !may_be_watched(ctx) {
        return;
    }
    // SAFETY: read-only global, constant after load.
    let layout = unsafe { ptr::read_volatile(&DHCPFIX_LAYOUT) };
    let Some((dev, key)) = device(ctx, &layout) else {
        // Without the device's namespace there is no configuration to find.
        return;
    };
    // SAFETY: the value is only read, and map values stay valid while the
    // program runs (RCU).
    let Some(cfg) = (unsafe { CONFIG.get(key) }) else {
        return;
    };
    let outcome = match frame::parse(&SkbFrame(ctx), |port| cfg.watches(port)) {
        Parsed::Other => return,
        Parsed::Skip(reason) => {
            explain_skip(ctx, &key, reason);
            Outcome::Skipped
        }
        Parsed::Dhcp(packet) => {
            let outcome = decide(ctx, &layout, dev, cfg, &packet, &key);
            match outcome {
                Outcome::Filled => emit(ctx, key, &packet, EVENT_FILLED),
                Outcome::WouldFill => emit(ctx, key, &packet, EVENT_WOULD_FILL),
                _ => {}
            }
            observe(ctx, &key, &packet, false);
            outcome
        }
    };
    if let Some(counters) = COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value of this CPU; nothing else writes it now.
        unsafe { (*counters).record(outcome) };
    }
}

#[inline(always)]
fn watch_requests(ctx: &TcContext) {
    if !may_be_watched(ctx) {
        return;
    }
    // SAFETY: read-only global, constant after load.
    let layout = unsafe { ptr::read_volatile(&DHCPFIX_LAYOUT) };
    let Some((_, key)) = device(ctx, &layout) else {
        return;
    };
    // SAFETY: only read; map values stay valid while the program runs.
    let Some(cfg) = (unsafe { CONFIG.get(key) }) else {
        return;
    };
    if let Parsed::Dhcp(packet) = frame::parse(&SkbFrame(ctx), |port| cfg.watches(port)) {
        observe(ctx, &key, &packet, true);
    }
}

/// Records a DHCP message in its guest's state: a request the guest sent
/// (`from_guest`, ingress) or a reply that reached it (egress).
#[inline(always)]
fn observe(ctx: &TcContext, key: &IfaceKey, packet: &DhcpPacket, from_guest: bool) {
    let frame = SkbFrame(ctx);
    let message = if packet.family == FAMILY_V6 {
        // The guest's MAC: the source of what it sends, the destination of
        // what it gets.
        let Some(client) = frame.load::<6>(if from_guest { 6 } else { 0 }) else {
            return;
        };
        dhcp::read_v6(&frame, packet.payload(), packet.end(), client)
    } else {
        dhcp::read_v4(&frame, packet.payload(), packet.end())
    };
    let Some(m) = message else { return };
    // A guest's own DHCP server (replies on ingress) is not its client side.
    if m.role == Role::Other || m.role.from_client() != from_guest {
        return;
    }
    let gkey = GuestKey::new(key.netns, key.ifindex, packet.family, &m.client);
    let Some(zero) = GUEST_ZERO.get_ptr(0) else {
        return;
    };
    if GUESTS.get_ptr_mut(gkey).is_none() {
        // SAFETY: `zero` points at the array's one value, valid while the
        // program runs. Fails only when the map is full: the guest is then
        // not followed. The value goes by reference: a copy would not fit
        // the 512-byte BPF stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = GUESTS.insert(gkey, unsafe { &*zero }, 0);
    }
    let Some(state) = GUESTS.get_ptr_mut(gkey) else {
        return;
    };
    // SAFETY: the map value stays valid while the program runs; two CPUs
    // updating one guest at once (its own packets) at worst lose a count.
    let state = unsafe { &mut *state };
    if state.mac != m.client {
        // The slot held another MAC: the latest wins.
        // SAFETY: both point at whole GuestState values in maps.
        unsafe { ptr::copy_nonoverlapping(zero, state, 1) };
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if from_guest {
        state.on_request(now, &m);
        state.request_options_len = copy_options(ctx, &m, &mut state.request_options);
    } else {
        if state.keeps_reply_options(m.role) {
            state.reply_options_len = copy_options(ctx, &m, &mut state.reply_options);
        }
        state.on_reply(now, &m);
    }
}

/// Copies the first bytes of a message's options (at most
/// [`OPTIONS_LEN`]) into `out`; returns how many.
#[inline(always)]
fn copy_options(ctx: &TcContext, m: &Message, out: &mut [u8; OPTIONS_LEN]) -> u8 {
    let len = m.end.saturating_sub(m.options);
    if len == 0 {
        return 0;
    }
    // n in [1, OPTIONS_LEN], written so the verifier sees both bounds.
    let n = ((len.min(OPTIONS_LEN as u32) - 1) & (OPTIONS_LEN as u32 - 1)) + 1;
    // SAFETY: `out` has OPTIONS_LEN writable bytes and n <= OPTIONS_LEN; the
    // helper fails, writing nothing, if the packet is shorter.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast_const().cast(),
            m.options,
            out.as_mut_ptr().cast(),
            n,
        )
    };
    if ret == 0 {
        n as u8
    } else {
        0
    }
}

/// The skb's device and its key: the namespace cookie is read through
/// `dev->nd_net.net->net_cookie` at offsets resolved from BTF.
#[inline(always)]
fn device(ctx: &TcContext, layout: &KernelLayout) -> Option<(*const u8, IfaceKey)> {
    // SAFETY: ctx.skb.skb is the valid __sk_buff the kernel passed in.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if layout.flags & LAYOUT_VALID == 0 {
        return None;
    }
    // The ctx of a sched_cls program is the struct sk_buff itself.
    let skb = ctx.skb.skb as *const u8;
    let dev = read_kernel::<*const u8>(skb, layout.skb_dev)?;
    if dev.is_null() {
        return None;
    }
    let net = read_kernel::<*const u8>(dev, layout.dev_nd_net)?;
    if net.is_null() {
        return None;
    }
    let netns = read_kernel::<u64>(net, layout.net_cookie)?;
    Some((dev, IfaceKey::new(netns, ifindex)))
}

/// Whether the loader asked for explanations of skipped packets and helper
/// errors (`dhcpfix run` at debug level). One array lookup, on those rare
/// paths only.
#[inline(always)]
fn explaining() -> bool {
    SETTINGS.get(0).is_some_and(|s| s.flags & SETTING_EXPLAIN != 0)
}

#[inline(always)]
fn explain_skip(ctx: &TcContext, key: &IfaceKey, reason: SkipReason) {
    if !explaining() {
        return;
    }
    let why = match reason {
        SkipReason::Fragment => "an IP fragment",
        SkipReason::BadLength => "IP and UDP lengths disagree",
        SkipReason::Truncated => "shorter than its IP length",
        SkipReason::TooLarge => "a UDP segment over 2048 bytes",
    };
    debug!(
        ctx,
        "ifindex {} netns {}: skipped a DHCP-port packet: {}", key.ifindex, key.netns, why
    );
}

#[inline(always)]
fn explain(ctx: &TcContext, key: &IfaceKey, why: &str) {
    if explaining() {
        debug!(ctx, "ifindex {} netns {}: {}", key.ifindex, key.netns, why);
    }
}

/// Reports a fill to the agent. Reserves first, so that a full ring buffer
/// costs one helper call and no packet reads.
#[inline(always)]
fn emit(ctx: &TcContext, key: IfaceKey, packet: &DhcpPacket, outcome: u8) {
    let Some(mut entry) = EVENTS.reserve::<FillEvent>(0) else {
        return;
    };
    entry.write(FillEvent::read(&SkbFrame(ctx), key, packet, outcome));
    entry.submit(0);
}

/// The fast path: with direct packet access, leave after a few instructions
/// unless the frame may be IPv4 UDP to a watched port. VLAN-tagged frames and
/// headers beyond the linear part go to the full parser.
#[inline(always)]
fn may_be_watched(ctx: &TcContext) -> bool {
    let data = ctx.data();
    let data_end = ctx.data_end();
    if data + 34 > data_end {
        return true;
    }
    // SAFETY: bytes 0..34 are within the packet (checked above).
    let (ethertype, version_ihl, proto) = unsafe {
        (
            u16::from_be(ptr::read_unaligned((data + 12) as *const u16)),
            *((data + 14) as *const u8),
            *((data + 23) as *const u8),
        )
    };
    let dport_at = match ethertype {
        ETH_P_IP if proto == IPPROTO_UDP => data + 14 + usize::from(version_ihl & 0x0f) * 4 + 2,
        // The next header (byte 20) is within the 34 checked; UDP right
        // after the fixed header, or not ours.
        // SAFETY: byte 20 is within the packet (checked above).
        ETH_P_IPV6 if unsafe { *((data + 20) as *const u8) } == IPPROTO_UDP => data + 14 + 40 + 2,
        ETH_P_IPV6 => return false,
        ETH_P_8021Q | ETH_P_8021AD => return true,
        _ => return false,
    };
    if dport_at + 2 > data_end {
        return true;
    }
    // SAFETY: the two bytes at dport_at are within the packet (checked above).
    let dport = u16::from_be(unsafe { ptr::read_unaligned(dport_at as *const u16) });
    let (word, bit) = port_bit(dport);
    PORTS.get(word).is_none_or(|w| w & bit != 0)
}

#[inline(always)]
fn decide(
    ctx: &TcContext,
    layout: &KernelLayout,
    dev: *const u8,
    cfg: &IfaceConfig,
    packet: &DhcpPacket,
    key: &IfaceKey,
) -> Outcome {
    // SAFETY: valid __sk_buff from the kernel.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        explain(ctx, key, "skipped a GSO packet");
        return Outcome::Skipped;
    }
    let Some((partial, offload)) = skb_state(ctx, layout, dev, packet.family) else {
        explain(ctx, key, "error: reading ip_summed or the device features failed");
        return Outcome::Error;
    };
    if !partial {
        return Outcome::Valid;
    }
    if !offload {
        return Outcome::Deferred;
    }
    match csum_at_udp_check(ctx, layout, packet) {
        Some(true) => {}
        Some(false) => {
            explain(
                ctx,
                key,
                "skipped: the kernel would finish the checksum elsewhere than the UDP check field",
            );
            return Outcome::Skipped;
        }
        None => {
            explain(ctx, key, "error: reading csum_start/csum_offset failed");
            return Outcome::Error;
        }
    }
    match cfg.mode {
        MODE_FILL => match fill(ctx, packet) {
            Some(()) => Outcome::Filled,
            None => {
                explain(ctx, key, "error: a checksum helper failed while filling");
                Outcome::Error
            }
        },
        MODE_AUDIT => Outcome::WouldFill,
        _ => Outcome::Skipped,
    }
}

/// Whether the skb is `CHECKSUM_PARTIAL`, and whether its device offloads
/// checksums of this IP family. `None` when the kernel state cannot be read.
#[inline(always)]
fn skb_state(ctx: &TcContext, layout: &KernelLayout, dev: *const u8, family: u8) -> Option<(bool, bool)> {
    // SAFETY: read-only global, constant after load.
    if unsafe { ptr::read_volatile(&DHCPFIX_TEST_MODE) } != 0 {
        // SAFETY: valid __sk_buff from the kernel.
        let mark = unsafe { (*ctx.skb.skb).mark };
        return Some((mark & TEST_MARK_PARTIAL != 0, mark & TEST_MARK_OFFLOAD != 0));
    }
    let skb = ctx.skb.skb as *const u8;
    let summed = read_kernel::<u8>(skb, layout.skb_ip_summed)?;
    let partial = layout.ip_summed(summed) == CHECKSUM_PARTIAL;
    if !partial {
        return Some((false, false));
    }
    let features = read_kernel::<u64>(dev, layout.dev_features)?;
    let offload = if family == FAMILY_V6 {
        layout.offloads_checksum6(features)
    } else {
        layout.offloads_checksum(features)
    };
    Some((true, offload))
}

/// Whether the kernel would finish the checksum exactly at this packet's UDP
/// check field (`csum_start` at the UDP header, `csum_offset` 6). Another
/// position means an encapsulation or layout we do not understand.
#[inline(always)]
fn csum_at_udp_check(ctx: &TcContext, layout: &KernelLayout, packet: &DhcpPacket) -> Option<bool> {
    // SAFETY: read-only global, constant after load.
    if unsafe { ptr::read_volatile(&DHCPFIX_TEST_MODE) } != 0 || layout.flags & LAYOUT_HAS_CSUM_START == 0 {
        return Some(true);
    }
    let skb = ctx.skb.skb as *const u8;
    let head = read_kernel::<u64>(skb, layout.skb_head)?;
    let data = read_kernel::<u64>(skb, layout.skb_data)?;
    let start = read_kernel::<u16>(skb, layout.skb_csum_start)?;
    let offset = read_kernel::<u16>(skb, layout.skb_csum_offset)?;
    let l4_from_head = data.wrapping_sub(head).wrapping_add(u64::from(packet.l4));
    Some(u64::from(start) == l4_from_head && u32::from(offset) == UDP_CHECK_OFFSET)
}

#[inline(always)]
fn read_kernel<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    let mut out = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: bpf_probe_read_kernel copies size_of::<T>() bytes into `out`
    // and faults safely (returning < 0) on a bad source address.
    let ret = unsafe {
        bpf_probe_read_kernel(
            out.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            base.wrapping_add(offset as usize).cast(),
        )
    };
    if ret == 0 {
        // SAFETY: the helper filled every byte.
        Some(unsafe { out.assume_init() })
    } else {
        None
    }
}

/// Computes the UDP checksum over pseudo-header and segment and writes it
/// into the check field. Reads the segment in chunks through
/// `bpf_skb_load_bytes`, so it works on non-linear skbs and odd lengths.
#[inline(always)]
fn fill(ctx: &TcContext, packet: &DhcpPacket) -> Option<()> {
    let skb: *const core::ffi::c_void = ctx.skb.skb.cast_const().cast();
    let udp_len = u32::from(packet.udp_len);
    if udp_len < 8 || udp_len > u32::from(MAX_UDP_LEN) {
        return None;
    }
    // The pseudo-header: RFC 768 (12 bytes) or RFC 8200 (40 bytes).
    let mut pseudo = [0u8; 40];
    let pseudo_len = if packet.family == FAMILY_V6 {
        pseudo[..16].copy_from_slice(&packet.src);
        pseudo[16..32].copy_from_slice(&packet.dst);
        pseudo[32..36].copy_from_slice(&udp_len.to_be_bytes());
        pseudo[39] = IPPROTO_UDP;
        40
    } else {
        pseudo[..4].copy_from_slice(&packet.src[..4]);
        pseudo[4..8].copy_from_slice(&packet.dst[..4]);
        pseudo[9] = IPPROTO_UDP;
        pseudo[10..12].copy_from_slice(&packet.udp_len.to_be_bytes());
        12
    };
    // SAFETY: `pseudo` holds 40 readable bytes and pseudo_len (12 or 40) is
    // a multiple of 4, as the helper requires.
    let mut sum = unsafe { bpf_csum_diff(ptr::null_mut(), 0, pseudo.as_mut_ptr().cast(), pseudo_len, 0) };
    if sum < 0 {
        return None;
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch of this CPU, not shared while the program runs.
    let buf = unsafe { &mut (*scratch).buf };
    let mut done: u32 = 0;
    let mut chunk = 0;
    while chunk < (MAX_UDP_LEN as u32).div_ceil(CHUNK) {
        if done >= udp_len {
            break;
        }
        // n in [1, CHUNK], written so the verifier can see both bounds.
        let n = (((udp_len - done).min(CHUNK) - 1) & (CHUNK - 1)) + 1;
        // Zero the word the odd tail lands in, so padding sums as zero.
        let pad = (n & !3) as usize;
        if pad > CHUNK as usize {
            return None;
        }
        buf[pad..pad + 4].copy_from_slice(&[0; 4]);
        // SAFETY: `buf` holds CHUNK + 4 bytes and n <= CHUNK.
        let ret = unsafe { bpf_skb_load_bytes(skb, packet.l4 + done, buf.as_mut_ptr().cast(), n) };
        if ret != 0 {
            return None;
        }
        if chunk == 0 {
            // The sum is defined with the check field zeroed; a partial skb
            // holds the pseudo-header seed there.
            buf[UDP_CHECK_OFFSET as usize] = 0;
            buf[UDP_CHECK_OFFSET as usize + 1] = 0;
        }
        let words = (n + 3) & !3;
        if words > CHUNK {
            return None;
        }
        // SAFETY: `words` <= CHUNK + 3 rounded down to 4 fits in `buf`.
        sum = unsafe { bpf_csum_diff(ptr::null_mut(), 0, buf.as_mut_ptr().cast(), words, sum as u32) };
        if sum < 0 {
            return None;
        }
        done += CHUNK;
        chunk += 1;
    }
    // `sum` is a 32-bit one's-complement sum of the bytes as loaded in
    // memory order; folded and inverted it is stored the same way.
    let mut folded = sum as u64;
    folded = (folded & 0xffff) + (folded >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    // Zero on the wire means "no checksum" for IPv4 and is invalid for
    // IPv6: a computed zero is sent as its equivalent, 0xffff.
    let csum = match !(folded as u16) {
        0 => 0xffff,
        c => c,
    };
    // SAFETY: writes the two bytes of the UDP check field, inside the packet
    // (l4 + 8 <= skb->len was checked by the parser).
    let ret = unsafe {
        bpf_skb_store_bytes(
            ctx.skb.skb,
            packet.l4 + UDP_CHECK_OFFSET,
            ptr::from_ref(&csum).cast(),
            2,
            0,
        )
    };
    (ret == 0).then_some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
