//! `bench.svg`: per-packet cost, throughput against the workarounds, cold
//! attach times, each with its spread and its target, and the time from a
//! tap's creation to its attachment under `dhcpfix run --netns all`.

use std::{error::Error, path::Path};

use plotters::{coord::Shift, prelude::*};

use crate::{
    error::{BenchError, Result},
    report::{self, Report},
    stats::Stat,
};

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn Error>>;

const FONT: &str = "sans-serif";
const BAR: RGBColor = RGBColor(70, 110, 170);
const TARGET: RGBColor = RGBColor(200, 60, 50);

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    draw_all(report, path).map_err(|e| BenchError::Chart {
        path: path.into(),
        detail: e.to_string(),
    })
}

fn draw_all(report: &Report, path: &Path) -> DrawResult {
    let root = SVGBackend::new(path, (2000, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "dhcpfix benchmarks ({}, {} CPUs, {}){}",
        report.machine.kernel,
        report.machine.nproc,
        report.generated_utc,
        if report.quick { " QUICK RUN" } else { "" }
    );
    let root = root.titled(&title, (FONT, 20))?;
    let panels = root.split_evenly((1, 4));
    prog_cost(report, &panels[0])?;
    throughput(report, &panels[1])?;
    cold_attach(report, &panels[2])?;
    every_namespace(report, &panels[3])?;
    root.present()?;
    Ok(())
}

fn not_measured(area: &Area<'_>, what: &str) -> DrawResult {
    area.draw(&Text::new(format!("{what}: not measured"), (40, 200), (FONT, 14)))?;
    Ok(())
}

/// Bars of medians with min–max whiskers and an optional target line.
fn bars(
    area: &Area<'_>,
    title: &str,
    y_desc: &str,
    labels: &[&str],
    stats: &[&Stat],
    target: Option<f64>,
) -> DrawResult {
    let top = stats
        .iter()
        .map(|s| s.max)
        .chain(target)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 15))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        // A segmented 0..n has n + 1 segments.
        .build_cartesian_2d((0..labels.len().saturating_sub(1)).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).map_or(String::new(), |s| (*s).to_owned()),
            _ => String::new(),
        })
        .x_label_style((FONT, 11))
        .y_desc(y_desc)
        .draw()?;
    chart.draw_series(stats.iter().enumerate().map(|(i, s)| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), s.median),
            ],
            BAR.filled(),
        );
        bar.set_margin(0, 0, 6, 6);
        bar
    }))?;
    chart.draw_series(stats.iter().enumerate().map(|(i, s)| {
        PathElement::new(
            vec![
                (SegmentValue::CenterOf(i), s.min),
                (SegmentValue::CenterOf(i), s.max),
            ],
            BLACK.stroke_width(2),
        )
    }))?;
    if let Some(t) = target {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(SegmentValue::Exact(0), t), (SegmentValue::Last, t)],
            TARGET.stroke_width(2),
        )))?;
    }
    Ok(())
}

fn prog_cost(report: &Report, area: &Area<'_>) -> DrawResult {
    let Some(pc) = &report.prog_cost else {
        return not_measured(area, "per-packet cost");
    };
    let short = |key: &str| match key {
        "empty" => "empty",
        "tcp_ipv4" => "TCP",
        "udp_ipv4" => "UDP",
        "tcp_ipv6" => "IPv6",
        "arp" => "ARP",
        "dhcp_valid_300" => "DHCP ok",
        "dhcp_valid_300_test_mode" => "DHCP ok*",
        "dhcp_fill_300" => "fill 300*",
        "dhcp_fill_576" => "fill 576*",
        "dhcp_fill_1472" => "fill 1472*",
        "dhcpv6_reply_valid" => "DHCPv6 ok",
        "ingress_tcp_ipv4" => "in TCP",
        "ingress_udp_ipv4" => "in UDP",
        "ingress_tcp_ipv6" => "in IPv6",
        "ingress_arp" => "in ARP",
        "ingress_dhcp_request" => "in REQ",
        "ingress_dhcpv6_solicit" => "in SOL",
        _ => "?",
    };
    let labels: Vec<&str> = pc.cases.iter().map(|c| short(&c.key)).collect();
    let stats: Vec<&Stat> = pc.cases.iter().map(|c| &c.ns).collect();
    let floor = pc
        .cases
        .first()
        .map(|c| c.ns.median * report::FAST_PATH_MAX_RATIO);
    bars(
        area,
        "ns per packet, attached programs (in: ingress; *: test mode); red: 1.5x empty",
        "ns per packet",
        &labels,
        &stats,
        floor,
    )
}

fn throughput(report: &Report, area: &Area<'_>) -> DrawResult {
    let Some(t) = &report.throughput else {
        return not_measured(area, "throughput");
    };
    let short = |key: &str| match key {
        "nothing" => "nothing",
        "dhcpfix" => "dhcpfix",
        "ethtool_tx_off" => "tx off",
        "iptables_checksum" => "iptables",
        _ => "?",
    };
    let labels: Vec<&str> = t.variants.iter().map(|v| short(&v.key)).collect();
    let stats: Vec<&Stat> = t.variants.iter().map(|v| &v.gbit_s).collect();
    let target = t
        .variants
        .first()
        .map(|v| v.gbit_s.median * report::THROUGHPUT_MIN_RATIO);
    bars(
        area,
        "bulk TCP over veth, Gbit/s; red: 98% of nothing",
        "Gbit/s",
        &labels,
        &stats,
        target,
    )
}

/// Sorted samples as a percentile curve, with an optional target line.
fn percentiles(area: &Area<'_>, title: &str, sorted: &[f64], target: Option<f64>) -> DrawResult {
    let top = sorted
        .last()
        .copied()
        .unwrap_or(0.0)
        .max(target.unwrap_or(0.0))
        .max(1e-9)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 15))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..100f64, 0f64..top)?;
    chart.configure_mesh().x_desc("percentile").y_desc("ms").draw()?;
    let n = sorted.len().max(2) - 1;
    let points: Vec<(f64, f64)> = sorted
        .iter()
        .enumerate()
        .map(|(i, ms)| (i as f64 * 100.0 / n as f64, *ms))
        .collect();
    chart.draw_series(std::iter::once(PathElement::new(points, BAR.stroke_width(2))))?;
    if let Some(t) = target {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, t), (100.0, t)],
            TARGET.stroke_width(2),
        )))?;
    }
    Ok(())
}

fn every_namespace(report: &Report, area: &Area<'_>) -> DrawResult {
    let Some(n) = &report.namespaces else {
        return not_measured(area, "every namespace");
    };
    let mut sorted = n.churn.attach.samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    percentiles(
        area,
        &format!(
            "--netns all, {} namespaces x {}: new tap to attached, {} taps",
            n.namespaces,
            n.taps_per_namespace,
            sorted.len()
        ),
        &sorted,
        None,
    )
}

fn cold_attach(report: &Report, area: &Area<'_>) -> DrawResult {
    let Some(s) = &report.scale else {
        return not_measured(area, "cold attach");
    };
    let mut sorted = s.cold_attach.samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    percentiles(
        area,
        &format!("one cold `dhcpfix attach`, {} calls; red: 50 ms", sorted.len()),
        &sorted,
        Some(report::COLD_ATTACH_MAX_MS),
    )
}
