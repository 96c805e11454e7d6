//! `dhcpfix leases [--json] [--netns NS] [IFACE...]`: each guest's DHCP
//! state as dhcpfix saw it on its tap, in fill and audit mode alike.

use std::path::Path;

use serde::Serialize;

use super::{netns_arg::NetnsArg, output};
use dhcpfix::{
    leases::{self, Guest},
    netdev::format_mac,
    netns,
    pins::PinDir,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only guests on these interfaces (default: every attached one).
    #[arg(value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub netns: NetnsArg,
}

#[derive(Serialize)]
struct Leases {
    guests: Vec<Guest>,
}

/// `1h02m`, `45s`, `-3m10s` (a lease that ran out).
fn duration(seconds: i64) -> String {
    let sign = if seconds < 0 { "-" } else { "" };
    let s = seconds.unsigned_abs();
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    let body = match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    };
    format!("{sign}{body}")
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let guests = match PinDir::open(pin_dir)? {
        Some(pins) => {
            let (namespaces, cookie) = args.netns.scope()?;
            leases::collect(&pins, &namespaces, &args.interfaces)?
                .into_iter()
                .filter(|g| cookie.is_none_or(|c| g.netns.cookie == c))
                .collect()
        }
        None => Vec::new(),
    };
    if args.json {
        return output::json(&Leases { guests });
    }
    if guests.is_empty() {
        println!(
            "no guest seen yet: dhcpfix records a guest when its first DHCP message passes an attached tap"
        );
        return Ok(());
    }
    let host = netns::host_cookie();
    let dash = || "-".to_owned();
    let rows = guests
        .iter()
        .map(|g| {
            vec![
                g.interface.clone(),
                g.netns.label(host),
                format_mac(&g.mac),
                g.state.name().to_owned(),
                g.ip.map_or_else(dash, |ip| ip.to_string()),
                g.lease_remaining_s.map_or_else(dash, duration),
                g.last_ack_s_ago
                    .map_or_else(dash, |s| format!("{} ago", duration(s as i64))),
                g.requests_since_ack.to_string(),
                g.rejected_replies.to_string(),
                g.hostname.clone().unwrap_or_else(dash),
                g.vendor_class.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &[
                "interface",
                "netns",
                "mac",
                "state",
                "ip",
                "lease left",
                "last ack",
                "requests",
                "rejected",
                "hostname",
                "vendor class",
            ],
            rows,
            5
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(super::duration(45), "45s");
        assert_eq!(super::duration(190), "3m10s");
        assert_eq!(super::duration(3720), "1h02m");
        assert_eq!(super::duration(-190), "-3m10s");
        assert_eq!(super::duration(90_000), "1d01h");
    }
}
