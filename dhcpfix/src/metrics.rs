//! Prometheus metrics: the per-interface counters, read from the pinned maps
//! at scrape time, in the classic Prometheus text format (0.0.4).
//!
//! The classic format (not OpenMetrics) is what both a Prometheus server and
//! the node exporter's textfile collector read, so `/metrics` and
//! `dhcpfix stats --format prometheus` print the same text.

use std::collections::HashMap;

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{
    attach::AttachError,
    counters::{self, InterfaceStats, Totals},
    leases::{self, Guest},
    netns,
    pins::{maps::Maps, PinDir, PinsError},
};

/// Errors while rendering or serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("encoding metrics: {0}")]
    Encode(#[from] prometheus::Error),
    #[error(transparent)]
    Read(Box<AttachError>),
}

impl From<PinsError> for MetricsError {
    fn from(e: PinsError) -> Self {
        Self::Read(Box::new(AttachError::Pins(e)))
    }
}

impl From<AttachError> for MetricsError {
    fn from(e: AttachError) -> Self {
        Self::Read(Box::new(e))
    }
}

/// A counter: metric name, help text, and its value in [`Totals`].
type CounterSpec = (&'static str, &'static str, fn(&Totals) -> u64);

/// The counters, each with its metric name and help text.
const COUNTERS: [CounterSpec; 7] = [
    (
        "dhcpfix_packets_seen_total",
        "UDP packets (IPv4 or IPv6) to a watched DHCP port examined.",
        |t| t.seen,
    ),
    (
        "dhcpfix_checksums_filled_total",
        "Partial UDP checksums completed in place.",
        |t| t.filled,
    ),
    (
        "dhcpfix_checksums_would_fill_total",
        "Partial UDP checksums that would have been completed (audit mode).",
        |t| t.would_fill,
    ),
    (
        "dhcpfix_checksums_valid_total",
        "Packets whose checksum was already complete.",
        |t| t.valid,
    ),
    (
        "dhcpfix_checksums_deferred_total",
        "Partial checksums left to the kernel (interface without checksum offload).",
        |t| t.deferred,
    ),
    (
        "dhcpfix_packets_skipped_total",
        "Packets left alone as unsafe to touch (fragments, GSO, bad lengths, too large).",
        |t| t.skipped,
    ),
    (
        "dhcpfix_errors_total",
        "Packets left alone because a kernel helper failed.",
        |t| t.errors,
    ),
];

/// An interface the agent's patterns match that is not attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unattached {
    pub interface: String,
    /// The `netns` label of its namespace.
    pub netns: String,
    /// Why, in a word: `attach_failed`.
    pub reason: &'static str,
}

/// What only the agent knows: how namespaces are labelled.
#[derive(Clone, Debug, Default)]
pub struct Context<'a> {
    /// The cookie of the host's namespace (labelled `host`).
    pub host: Option<u64>,
    /// Host names of pods, by namespace cookie (the `pod` label).
    pub pods: Option<&'a HashMap<u64, String>>,
    /// Interfaces matching the agent's patterns, not attached.
    pub unattached: &'a [Unattached],
    /// The guests seen on the attached interfaces ([`leases::of`]).
    pub guests: &'a [Guest],
    /// Whether each guest gets series of its own (`mac` label); hosts with
    /// very many guests turn this off and keep the per-interface ones.
    pub per_guest: bool,
}

/// Encodes `stats` (attached interfaces are exported, gone ones are not).
pub fn encode(stats: &[InterfaceStats], ctx: &Context<'_>) -> Result<String, MetricsError> {
    let registry = Registry::new();
    let live: Vec<&InterfaceStats> = stats.iter().filter(|s| s.attachment.attached).collect();
    let pod = |cookie: u64| -> &str { ctx.pods.and_then(|p| p.get(&cookie)).map_or("", String::as_str) };
    for (name, help, value) in COUNTERS {
        let family = IntCounterVec::new(Opts::new(name, help), &["interface", "netns", "pod"])?;
        for s in &live {
            let a = &s.attachment;
            family
                .with_label_values(&[a.name.as_str(), &a.netns.label(ctx.host), pod(a.netns.cookie)])
                .inc_by(value(&s.counters));
        }
        registry.register(Box::new(family))?;
    }
    let attached = IntGauge::new(
        "dhcpfix_attached_interfaces",
        "Interfaces dhcpfix is attached to.",
    )?;
    attached.set(live.len() as i64);
    registry.register(Box::new(attached))?;
    let unattached = IntGaugeVec::new(
        Opts::new(
            "dhcpfix_interface_unattached",
            "1 for each interface the agent's patterns match that is not attached.",
        ),
        &["interface", "netns", "reason"],
    )?;
    for u in ctx.unattached {
        unattached
            .with_label_values(&[u.interface.as_str(), &u.netns, u.reason])
            .set(1);
    }
    registry.register(Box::new(unattached))?;
    encode_guests(&registry, ctx, &pod)?;
    let info = IntGaugeVec::new(
        Opts::new(
            "dhcpfix_build_info",
            "dhcpfix version and kernel release; always 1.",
        ),
        &["version", "kernel"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), &kernel_release()])
        .set(1);
    registry.register(Box::new(info))?;

    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Guests per state and the replies they threw away, per interface; with
/// [`Context::per_guest`], each guest's state and remaining lease.
fn encode_guests<'a>(
    registry: &Registry,
    ctx: &Context<'a>,
    pod: &dyn Fn(u64) -> &'a str,
) -> Result<(), MetricsError> {
    let states = IntGaugeVec::new(
        Opts::new(
            "dhcpfix_guests",
            "Guests seen on the interface, by DHCP state (requesting, rejecting, bound, renewing, rebinding, expired, declined, nak, released).",
        ),
        &["interface", "netns", "pod", "state"],
    )?;
    let rejected = IntCounterVec::new(
        Opts::new(
            "dhcpfix_rejected_replies_total",
            "DHCP replies that reached a guest and were thrown away: requests repeated for a transaction whose reply had been delivered.",
        ),
        &["interface", "netns", "pod"],
    )?;
    let guest_labels = ["interface", "netns", "pod", "mac", "family"];
    let guest_state = IntGaugeVec::new(
        Opts::new(
            "dhcpfix_guest_state",
            "1 for each guest, labelled with its DHCP state.",
        ),
        &["interface", "netns", "pod", "mac", "family", "state"],
    )?;
    let remaining = IntGaugeVec::new(
        Opts::new(
            "dhcpfix_guest_lease_remaining_seconds",
            "Seconds left on the guest's lease (negative once it ran out); absent without a finite lease.",
        ),
        &guest_labels,
    )?;
    let guest_rejected = IntCounterVec::new(
        Opts::new(
            "dhcpfix_guest_rejected_replies_total",
            "DHCP replies this guest threw away since dhcpfix first saw it.",
        ),
        &guest_labels,
    )?;
    for g in ctx.guests {
        let netns = g.netns.label(ctx.host);
        let pod = pod(g.netns.cookie);
        let iface = [g.interface.as_str(), &netns, pod];
        states
            .with_label_values(&[iface[0], iface[1], iface[2], g.state.name()])
            .inc();
        rejected
            .with_label_values(&iface)
            .inc_by(u64::from(g.rejected_replies));
        if ctx.per_guest {
            let mac = crate::netdev::format_mac(&g.mac);
            let family = if g.family == 6 { "ipv6" } else { "ipv4" };
            let labels = [iface[0], iface[1], iface[2], &mac, family];
            guest_state
                .with_label_values(&[
                    labels[0],
                    labels[1],
                    labels[2],
                    labels[3],
                    labels[4],
                    g.state.name(),
                ])
                .set(1);
            if let Some(left) = g.lease_remaining_s {
                remaining.with_label_values(&labels).set(left);
            }
            guest_rejected
                .with_label_values(&labels)
                .inc_by(u64::from(g.rejected_replies));
        }
    }
    registry.register(Box::new(states))?;
    registry.register(Box::new(rejected))?;
    if ctx.per_guest {
        registry.register(Box::new(guest_state))?;
        registry.register(Box::new(remaining))?;
        registry.register(Box::new(guest_rejected))?;
    }
    Ok(())
}

/// The metrics of every attachment in the pin directory at `path`, as read
/// now (nothing attached when there is none).
pub fn render(path: &std::path::Path) -> Result<String, MetricsError> {
    let (stats, guests) = match PinDir::open(path)? {
        Some(pins) => read(&pins, &netns::scan(false))?,
        None => Default::default(),
    };
    encode(
        &stats,
        &Context {
            host: netns::host_cookie(),
            guests: &guests,
            per_guest: true,
            ..Default::default()
        },
    )
}

/// The counters and the guests of every attachment in `namespaces`.
pub fn read(
    pins: &PinDir,
    namespaces: &[crate::netns::Netns],
) -> Result<(Vec<InterfaceStats>, Vec<Guest>), MetricsError> {
    let stats = counters::collect(pins, namespaces, &[])?;
    if stats.is_empty() {
        return Ok((stats, Vec::new()));
    }
    let attachments: Vec<_> = stats.iter().map(|s| s.attachment.clone()).collect();
    let guests = leases::of(&Maps::open(pins)?, &attachments, leases::boottime_ns());
    Ok((stats, guests))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attach::{Attachment, Method, Mode},
        netns::NetnsInfo,
    };

    fn iface(name: &str, attached: bool, filled: u64) -> InterfaceStats {
        InterfaceStats {
            attachment: Attachment {
                name: name.into(),
                ifindex: 7,
                netns: NetnsInfo {
                    name: None,
                    cookie: 1,
                },
                attached,
                mode: Some(Mode::Fill),
                method: Method::Tcx,
                ports: vec![68, 67],
            },
            counters: Totals {
                seen: filled + 1,
                filled,
                valid: 1,
                ..Default::default()
            },
        }
    }

    #[test]
    fn classic_text_format_with_one_series_per_interface() {
        let text = encode(
            &[
                iface("vnet0", true, 4),
                iface("vnet1", true, 0),
                iface("gone0", false, 9),
            ],
            &Context {
                host: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            text.contains("# TYPE dhcpfix_checksums_filled_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("dhcpfix_checksums_filled_total{interface=\"vnet0\",netns=\"host\",pod=\"\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("dhcpfix_checksums_filled_total{interface=\"vnet1\",netns=\"host\",pod=\"\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("dhcpfix_packets_seen_total{interface=\"vnet0\",netns=\"host\",pod=\"\"} 5\n"),
            "{text}"
        );
        assert!(text
            .contains("dhcpfix_checksums_would_fill_total{interface=\"vnet0\",netns=\"host\",pod=\"\"} 0\n"));
        assert!(text.contains("dhcpfix_attached_interfaces 2\n"), "{text}");
        assert!(text.contains("# TYPE dhcpfix_build_info gauge\n"), "{text}");
        assert!(
            text.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert!(!text.contains("gone0"), "{text}");
        // Nothing the textfile collector would refuse (OpenMetrics-only lines).
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        for name in COUNTERS.map(|c| c.0) {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }

    #[test]
    fn pods_and_unattached_interfaces() {
        let pods = HashMap::from([(1, "vm1".to_owned())]);
        let unattached = [Unattached {
            interface: "tap0".into(),
            netns: "cni-1".into(),
            reason: "attach_failed",
        }];
        let text = encode(
            &[iface("tap0", true, 2)],
            &Context {
                host: None,
                pods: Some(&pods),
                unattached: &unattached,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            text.contains("dhcpfix_checksums_filled_total{interface=\"tap0\",netns=\"#1\",pod=\"vm1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("dhcpfix_interface_unattached{interface=\"tap0\",netns=\"cni-1\",reason=\"attach_failed\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn guests_by_state_per_interface_and_optionally_per_guest() {
        use dhcpfix_common::{
            dhcp::{Message, Role, FAMILY_V4},
            guest::GuestState,
        };
        let mut state = GuestState::default();
        let m = |role| Message {
            family: FAMILY_V4,
            role,
            xid: 7,
            client: [0x52, 0x54, 0, 0, 0, 9],
            addr: [10, 0, 0, 9],
            ..Default::default()
        };
        state.on_request(1_000_000_000, &m(Role::Discover));
        state.on_reply(2_000_000_000, &m(Role::Offer));
        state.on_request(3_000_000_000, &m(Role::Discover));
        let a = iface("vnet0", true, 0).attachment;
        let guests = [leases::Guest::read(&a, &state, 4_000_000_000)];
        let ctx = |per_guest| Context {
            host: Some(1),
            guests: &guests,
            per_guest,
            ..Default::default()
        };
        let text = encode(&[iface("vnet0", true, 0)], &ctx(true)).unwrap();
        assert!(
            text.contains(
                "dhcpfix_guests{interface=\"vnet0\",netns=\"host\",pod=\"\",state=\"rejecting\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("dhcpfix_rejected_replies_total{interface=\"vnet0\",netns=\"host\",pod=\"\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("dhcpfix_guest_state{family=\"ipv4\",interface=\"vnet0\",mac=\"52:54:00:00:00:09\",netns=\"host\",pod=\"\",state=\"rejecting\"} 1\n"),
            "{text}"
        );
        // No lease yet: no remaining-lease series.
        assert!(!text.contains("dhcpfix_guest_lease_remaining_seconds{"), "{text}");
        let text = encode(&[iface("vnet0", true, 0)], &ctx(false)).unwrap();
        assert!(text.contains("dhcpfix_guests{"), "{text}");
        assert!(!text.contains("mac="), "{text}");
    }

    #[test]
    fn nothing_attached_still_reports_the_gauges() {
        let text = encode(&[], &Context::default()).unwrap();
        assert!(text.contains("dhcpfix_attached_interfaces 0\n"), "{text}");
        assert!(text.contains("dhcpfix_build_info{"), "{text}");
    }
}
