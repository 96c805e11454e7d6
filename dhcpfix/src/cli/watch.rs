//! `dhcpfix watch [--interval SECS] [--once] [IFACE...]`: a refreshing
//! per-interface table of the counters and their rates, read from the
//! pinned maps (whether `dhcpfix run` is running or not).

use std::{
    io::IsTerminal,
    path::Path,
    time::{Duration, Instant},
};

use super::{netns_arg::NetnsArg, output};
use dhcpfix::{counters::InterfaceStats, netns};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these interfaces (default: all attached).
    #[arg(value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Seconds between refreshes, and the window rates are measured over.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_interval)]
    pub interval: Duration,
    /// Print one table and exit: samples twice, --interval apart, and prints
    /// the totals and the rates between the two samples.
    #[arg(long)]
    pub once: bool,
    #[command(flatten)]
    pub netns: NetnsArg,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if (0.1..=3600.0).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{s:?}: give seconds between 0.1 and 3600")),
    }
}

/// One row per interface of `now`: each counter as `total (rate/s)`, the
/// rate over `secs` since `before`; `-` where there is no earlier sample of
/// the same attachment or its counters went backwards (re-created).
fn rows(
    before: Option<&[InterfaceStats]>,
    now: &[InterfaceStats],
    secs: f64,
    host: Option<u64>,
) -> Vec<Vec<String>> {
    now.iter()
        .map(|s| {
            let a = &s.attachment;
            let prev = before
                .and_then(|b| {
                    b.iter()
                        .find(|p| p.attachment.name == a.name && p.attachment.key() == a.key())
                })
                .map(|p| p.counters.values());
            let mut row = vec![
                if a.attached {
                    a.name.clone()
                } else {
                    format!("{} (gone)", a.name)
                },
                a.netns.label(host),
                a.mode.map_or("-".into(), |m| m.to_string()),
            ];
            for (i, v) in s.counters.values().into_iter().enumerate() {
                let rate = match prev {
                    Some(p) if v >= p[i] && secs > 0.0 => format!("{:.1}/s", (v - p[i]) as f64 / secs),
                    _ => "-".into(),
                };
                row.push(format!("{v} ({rate})"));
            }
            row
        })
        .collect()
}

fn sample(pin_dir: &Path, args: &Args) -> anyhow::Result<(Instant, Vec<InterfaceStats>)> {
    Ok((
        Instant::now(),
        super::stats::collect(pin_dir, &args.netns, &args.interfaces)?,
    ))
}

fn table(
    pin_dir: &Path,
    before: Option<&(Instant, Vec<InterfaceStats>)>,
    now: &(Instant, Vec<InterfaceStats>),
) -> String {
    if now.1.is_empty() {
        return format!(
            "dhcpfix is attached nowhere (pin directory {})",
            pin_dir.display()
        );
    }
    let secs = before.map_or(0.0, |b| now.0.duration_since(b.0).as_secs_f64());
    output::table(
        &output::counters_header(),
        rows(before.map(|b| b.1.as_slice()), &now.1, secs, netns::host_cookie()),
        3,
    )
}

pub fn run(pin_dir: &Path, args: Args) -> anyhow::Result<()> {
    let mut before = sample(pin_dir, &args)?;
    if args.once {
        std::thread::sleep(args.interval);
        let now = sample(pin_dir, &args)?;
        println!("{}", table(pin_dir, Some(&before), &now));
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal();
    let mut shown = table(pin_dir, None, &before);
    loop {
        if tty {
            // Home and clear, then redraw.
            print!("\x1b[H\x1b[2J");
        }
        println!(
            "dhcpfix watch: every {:.1} s, rates per second over the last interval; Ctrl-C to stop\n{shown}\n",
            args.interval.as_secs_f64()
        );
        std::thread::sleep(args.interval);
        let now = sample(pin_dir, &args)?;
        shown = table(pin_dir, Some(&before), &now);
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcpfix::attach::{Attachment, Method, Mode};
    use dhcpfix::counters::Totals;
    use dhcpfix::netns::NetnsInfo;

    fn stats(name: &str, ifindex: u32, seen: u64, filled: u64) -> InterfaceStats {
        InterfaceStats {
            attachment: Attachment {
                name: name.into(),
                ifindex,
                netns: NetnsInfo {
                    name: None,
                    cookie: 1,
                },
                attached: ifindex != 0,
                mode: Some(Mode::Fill),
                method: Method::Tcx,
                ports: vec![68, 67],
            },
            counters: Totals {
                seen,
                filled,
                ..Default::default()
            },
        }
    }

    #[test]
    fn totals_and_rates() {
        let before = [stats("vnet0", 7, 10, 4), stats("vnet1", 8, 5, 0)];
        let now = [
            stats("vnet0", 7, 20, 8),
            // Re-created: same name, new ifindex, counters from zero.
            stats("vnet1", 9, 1, 0),
            stats("vnet2", 10, 3, 3),
        ];
        let r = rows(Some(&before), &now, 2.0, Some(1));
        assert_eq!(r[0][..5], ["vnet0", "host", "fill", "20 (5.0/s)", "8 (2.0/s)"]);
        assert_eq!(r[0][5], "0 (0.0/s)");
        assert_eq!(r[1][3], "1 (-)");
        assert_eq!(r[2][3], "3 (-)");
        let first = rows(None, &now, 0.0, Some(1));
        assert_eq!(first[0][3], "20 (-)");
        assert_eq!(
            rows(None, &[stats("vnet5", 0, 0, 0)], 1.0, None)[0][0],
            "vnet5 (gone)"
        );
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert!(
            parse_interval("0").is_err() && parse_interval("x").is_err() && parse_interval("1e9").is_err()
        );
    }
}
