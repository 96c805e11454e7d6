//! Bulk TCP throughput through the device dhcpfix attaches to, against the
//! blunt workarounds. Each measurement gets a fresh veth pair, so nothing a
//! variant leaves behind (offload settings, netfilter hooks) leaks into the
//! next; the variants are interleaved, in a rotated order per repetition.

use std::{fs, time::Duration};

use dhcpfix_lab::kit::{checksum_fill_rule, find_tool, netns::in_netns, process};
use serde::{Deserialize, Serialize};

use crate::{
    dhcpfix_cli::Dhcpfix,
    error::{BenchError, Result},
    sandbox::{Netns, Sandbox},
    stats::Stat,
    topology::{self, VethPair, SENDER_IF},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Nothing,
    Dhcpfix,
    EthtoolTxOff,
    IptablesChecksum,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Nothing,
        Variant::Dhcpfix,
        Variant::EthtoolTxOff,
        Variant::IptablesChecksum,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Variant::Nothing => "nothing",
            Variant::Dhcpfix => "dhcpfix",
            Variant::EthtoolTxOff => "ethtool_tx_off",
            Variant::IptablesChecksum => "iptables_checksum",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Nothing => "nothing",
            Variant::Dhcpfix => "dhcpfix attached",
            Variant::EthtoolTxOff => "ethtool -K tx off",
            Variant::IptablesChecksum => "iptables CHECKSUM rule",
        }
    }

    pub fn how(self) -> String {
        match self {
            Variant::Nothing => "no fix".into(),
            Variant::Dhcpfix => format!("dhcpfix attach {SENDER_IF} (tcx egress)"),
            Variant::EthtoolTxOff => format!("ethtool -K {SENDER_IF} tx off"),
            Variant::IptablesChecksum => {
                "iptables -t mangle -A POSTROUTING -p udp --dport 68 -j CHECKSUM --checksum-fill".into()
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Length of one iperf3 run.
    pub secs: f64,
    pub repetitions: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VariantResult {
    pub key: String,
    pub label: String,
    pub how: String,
    pub gbit_s: Stat,
    /// Gbit/s over "nothing" of the same repetition.
    pub ratio_to_nothing: Stat,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Throughput {
    pub secs: f64,
    pub repetitions: usize,
    pub path: String,
    pub variants: Vec<VariantResult>,
}

pub fn run(sb: &Sandbox, dhcpfix: &Dhcpfix, cfg: Config) -> Result<Throughput> {
    let n = Variant::ALL.len();
    let mut samples = vec![Vec::with_capacity(cfg.repetitions); n];
    for rep in 0..cfg.repetitions {
        for k in 0..n {
            let i = (k + rep) % n;
            let gbit = measure(sb, dhcpfix, Variant::ALL[i], cfg.secs)?;
            eprintln!(
                "  throughput rep {}/{}: {:<24} {gbit:7.2} Gbit/s",
                rep + 1,
                cfg.repetitions,
                Variant::ALL[i].label()
            );
            samples[i].push(gbit);
        }
    }
    let nothing = samples[0].clone();
    Ok(Throughput {
        secs: cfg.secs,
        repetitions: cfg.repetitions,
        path: format!(
            "iperf3 TCP, one stream, from namespace A through veth {SENDER_IF} (stand-in for a tap) to namespace B"
        ),
        variants: Variant::ALL
            .iter()
            .zip(&samples)
            .map(|(v, s)| VariantResult {
                key: v.key().into(),
                label: v.label().into(),
                how: v.how(),
                gbit_s: Stat::of(s),
                ratio_to_nothing: Stat::ratio(s, &nothing),
            })
            .collect(),
    })
}

fn measure(sb: &Sandbox, dhcpfix: &Dhcpfix, variant: Variant, secs: f64) -> Result<f64> {
    let pair = VethPair::create(sb)?;
    let pin_dir = sb.pin_dir("tput");
    let result =
        apply(&pair.sender, dhcpfix, &pin_dir, variant).and_then(|()| topology::bulk_tcp(&pair, secs));
    drop(pair);
    if pin_dir.exists() {
        fs::remove_dir_all(&pin_dir).map_err(BenchError::io("remove", &pin_dir))?;
    }
    result
}

const TOOL_LIMIT: Duration = Duration::from_secs(30);

/// Puts `variant` in place on the sending device and checks that it is.
fn apply(ns: &Netns, dhcpfix: &Dhcpfix, pin_dir: &std::path::Path, variant: Variant) -> Result<()> {
    let programs = tcx_programs(ns)?;
    match variant {
        Variant::Nothing => {
            if programs != 0 {
                return Err(BenchError::Check(format!(
                    "{programs} tcx program(s) on a fresh {SENDER_IF}"
                )));
            }
        }
        Variant::Dhcpfix => {
            dhcpfix.attach(ns, pin_dir, &[SENDER_IF.to_string()])?;
            let programs = tcx_programs(ns)?;
            if programs != 1 {
                return Err(BenchError::Check(format!(
                    "dhcpfix attach left {programs} tcx program(s) on {SENDER_IF}"
                )));
            }
        }
        Variant::EthtoolTxOff => {
            let ethtool = find_tool("ethtool", "ethtool")?;
            process::run(
                ns.command(&ethtool).args(["-K", SENDER_IF, "tx", "off"]),
                None,
                TOOL_LIMIT,
            )?;
            let out = process::run(ns.command(&ethtool).args(["-k", SENDER_IF]), None, TOOL_LIMIT)?;
            if !String::from_utf8_lossy(&out.stdout).contains("tx-checksumming: off") {
                return Err(BenchError::Check(format!(
                    "ethtool -K {SENDER_IF} tx off did not turn tx checksumming off"
                )));
            }
        }
        Variant::IptablesChecksum => {
            let iptables = find_tool("iptables", "iptables")?;
            let rule = checksum_fill_rule(None);
            process::run(ns.command(&iptables).args(rule), None, TOOL_LIMIT)?;
            let out = process::run(
                ns.command(&iptables).args(["-t", "mangle", "-S", "POSTROUTING"]),
                None,
                TOOL_LIMIT,
            )?;
            if !String::from_utf8_lossy(&out.stdout).contains("CHECKSUM") {
                return Err(BenchError::Check(
                    "the iptables CHECKSUM rule is not in place".into(),
                ));
            }
        }
    }
    Ok(())
}

/// Programs on the sending device's tcx egress.
fn tcx_programs(ns: &Netns) -> Result<u32> {
    in_netns(ns.path(), || {
        let ifindex = dhcpfix::netdev::ifindex(SENDER_IF)
            .ok_or_else(|| BenchError::Check(format!("{SENDER_IF} not found")))?;
        dhcpfix::sys::prog_count(ifindex, dhcpfix::sys::BPF_TCX_EGRESS)
            .map_err(BenchError::sys("BPF_PROG_QUERY"))
    })?
}
