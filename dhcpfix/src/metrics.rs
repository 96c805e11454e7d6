//! Prometheus metrics: the per-interface counters, read from the pinned maps
//! at scrape time, in the classic Prometheus text format (0.0.4).
//!
//! The classic format (not OpenMetrics) is what both a Prometheus server and
//! the node exporter's textfile collector read, so `/metrics` and
//! `dhcpfix stats --format prometheus` print the same text.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, thread};

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{
    attach::AttachError,
    counters::{self, InterfaceStats, Totals},
    netns,
    pins::{PinDir, PinsError},
};

/// Errors while rendering or serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("serving metrics on {addr}: {reason}; pass another --metrics-addr, or --metrics-addr none")]
    Bind { addr: SocketAddr, reason: String },
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
        "IPv4 UDP packets to a watched DHCP port examined.",
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

/// Encodes `stats` (attached interfaces are exported, gone ones are not).
/// `host` is the cookie of the host's namespace (labelled `host`).
pub fn encode(stats: &[InterfaceStats], host: Option<u64>) -> Result<String, MetricsError> {
    let registry = Registry::new();
    let live: Vec<&InterfaceStats> = stats.iter().filter(|s| s.attachment.attached).collect();
    for (name, help, value) in COUNTERS {
        let family = IntCounterVec::new(Opts::new(name, help), &["interface", "netns"])?;
        for s in &live {
            family
                .with_label_values(&[s.attachment.name.as_str(), &s.attachment.netns.label(host)])
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

/// The metrics of every attachment in the pin directory at `path`, as read
/// now (nothing attached when there is none).
pub fn render(path: &std::path::Path) -> Result<String, MetricsError> {
    let stats = match PinDir::open(path)? {
        Some(pins) => counters::collect(&pins, &netns::scan(false), &[])?,
        None => Vec::new(),
    };
    encode(&stats, netns::host_cookie())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The `/metrics` endpoint; stops when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `GET /metrics` on `addr` from a thread of its own.
pub fn serve(addr: SocketAddr, pins: PathBuf) -> Result<MetricsServer, MetricsError> {
    let server = tiny_http::Server::http(addr).map_err(|e| MetricsError::Bind {
        addr,
        reason: e.to_string(),
    })?;
    let server = Arc::new(server);
    let for_thread = Arc::clone(&server);
    let thread = thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in for_thread.incoming_requests() {
                respond(request, &pins);
            }
        })
        .map_err(|e| MetricsError::Bind {
            addr,
            reason: format!("starting its thread: {e}"),
        })?;
    Ok(MetricsServer {
        server,
        thread: Some(thread),
    })
}

fn respond(request: tiny_http::Request, pins: &std::path::Path) {
    use tiny_http::{Header, Method, Response};
    let path = request.url().split('?').next().unwrap_or_default();
    let get = matches!(request.method(), Method::Get | Method::Head);
    let (status, content_type, body) = match (get, path) {
        (true, "/metrics") => match render(pins) {
            Ok(text) => (200, prometheus::TEXT_FORMAT, text),
            Err(e) => {
                log::error!("metrics: {e}");
                (500, "text/plain; charset=utf-8", format!("{e}\n"))
            }
        },
        (true, "/") => (
            200,
            "text/plain; charset=utf-8",
            "dhcpfix: metrics are at /metrics\n".to_owned(),
        ),
        (false, _) => (405, "text/plain; charset=utf-8", "GET only\n".to_owned()),
        (true, _) => (
            404,
            "text/plain; charset=utf-8",
            "not found; try /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::from_string(body).with_status_code(status);
    if let Ok(header) = Header::from_bytes("Content-Type", content_type) {
        response = response.with_header(header);
    }
    if let Err(e) = request.respond(response) {
        log::debug!("metrics: writing the response: {e}");
    }
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
            Some(1),
        )
        .unwrap();
        assert!(
            text.contains("# TYPE dhcpfix_checksums_filled_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("dhcpfix_checksums_filled_total{interface=\"vnet0\",netns=\"host\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("dhcpfix_checksums_filled_total{interface=\"vnet1\",netns=\"host\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("dhcpfix_packets_seen_total{interface=\"vnet0\",netns=\"host\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("dhcpfix_checksums_would_fill_total{interface=\"vnet0\",netns=\"host\"} 0\n"));
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
    fn nothing_attached_still_reports_the_gauges() {
        let text = encode(&[], None).unwrap();
        assert!(text.contains("dhcpfix_attached_interfaces 0\n"), "{text}");
        assert!(text.contains("dhcpfix_build_info{"), "{text}");
    }
}
