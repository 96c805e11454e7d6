//! The report: `bench.json` (everything, machine-readable), `BENCHMARKS.md`
//! (the same for people, with the targets and how it was measured) and
//! `bench.svg` (the chart).

use std::{fmt::Write as _, fs, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    chart,
    error::{BenchError, Result},
    machine::Machine,
    namespaces::Namespaces,
    prog_cost::{self, ProgCost},
    scale::Scale,
    stats::Stat,
    storm::Storm,
    throughput::Throughput,
};

pub const JSON_FILE: &str = "bench.json";
pub const MARKDOWN_FILE: &str = "BENCHMARKS.md";
pub const CHART_FILE: &str = "bench.svg";
/// 2: per-packet cases run on the attached program, with bpftool's figures.
/// 3: the every-namespace section (`namespaces`).
pub const SCHEMA: u32 = 3;

/// Goals from the issue.
pub const FAST_PATH_MAX_RATIO: f64 = 1.5;
pub const THROUGHPUT_MIN_RATIO: f64 = 0.98;
pub const COLD_ATTACH_MAX_MS: f64 = 50.0;
pub const TAPS_FOR_TARGET: usize = 1000;
pub const ALL_TAPS_MAX_S: f64 = 20.0;

/// One target and whether this run met it (`None`: not measured here).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub observed: String,
    pub met: Option<bool>,
    pub note: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    pub generated_utc: String,
    pub quick: bool,
    /// Wall time of the measurements (set-up and build not included).
    pub wall_time_s: f64,
    pub machine: Machine,
    pub dhcpfix_binary: String,
    pub prog_cost: Option<ProgCost>,
    pub throughput: Option<Throughput>,
    pub scale: Option<Scale>,
    pub storm: Option<Storm>,
    /// Absent from reports of schema 2.
    #[serde(default)]
    pub namespaces: Option<Namespaces>,
    pub targets: Vec<Target>,
    /// Sections this run did not measure (`--only`), kept from the report
    /// it replaced, with when and under what load they were measured.
    #[serde(default)]
    pub kept: Vec<KeptSection>,
}

/// A section of an earlier run, kept by a run with `--only`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeptSection {
    /// `prog_cost`, `throughput`, `scale`, `storm` or `namespaces`.
    pub section: String,
    pub generated_utc: String,
    pub load_start: [f64; 3],
    pub load_end: [f64; 3],
}

/// `median (min–max)` with `prec` decimals.
fn spread(s: &Stat, prec: usize) -> String {
    format!("{:.prec$} ({:.prec$}–{:.prec$})", s.median, s.min, s.max)
}

fn iqr(s: &Stat, prec: usize) -> String {
    format!("{:.prec$}–{:.prec$}", s.q1, s.q3)
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

impl Report {
    /// The report with its `targets` judged from the measurements (built
    /// with `schema: SCHEMA` and `targets` empty).
    pub fn evaluated(mut self) -> Report {
        self.targets = self.evaluate();
        self
    }

    fn case(&self, key: &str) -> Option<&prog_cost::CaseResult> {
        self.prog_cost.as_ref()?.cases.iter().find(|c| c.key == key)
    }

    /// Every bulk packet's path against the floor; where it misses, where
    /// the time goes.
    fn fast_path_target(&self) -> Option<Target> {
        let floor = self.case(prog_cost::EMPTY)?;
        let fast: Vec<&prog_cost::CaseResult> =
            prog_cost::FAST_PATH.iter().filter_map(|k| self.case(k)).collect();
        let worst = fast
            .iter()
            .max_by(|a, b| a.ratio_to_empty.median.total_cmp(&b.ratio_to_empty.median))?;
        let missed: Vec<&&prog_cost::CaseResult> = fast
            .iter()
            .filter(|c| c.ratio_to_empty.median > FAST_PATH_MAX_RATIO)
            .collect();
        let name = |c: &prog_cost::CaseResult| match c.program {
            prog_cost::Program::Ingress => format!("{} (ingress)", c.label),
            _ => c.label.clone(),
        };
        let observed = fast
            .iter()
            .map(|c| format!("{} {:.2}×", name(c), c.ratio_to_empty.median))
            .collect::<Vec<_>>()
            .join(", ");
        let note = if missed.is_empty() {
            format!(
                "the attached programs (egress and ingress) add at most {:.0} ns (median) to a packet \
                 that is not DHCP, on a floor of {:.0} ns: IPv4 UDP leaves after a direct read of its \
                 destination port and one lookup in the watched-ports bitmap, everything else after the \
                 ethertype/protocol check",
                worst.extra_ns.median, floor.ns.median
            )
        } else {
            format!(
                "missed by {}: the floor is only {:.0} ns (mostly the test-run loop), so a constant weighs \
                 heavily; dhcpfix adds {:.0} ns there",
                missed.iter().map(|c| name(c)).collect::<Vec<_>>().join(", "),
                floor.ns.median,
                worst.extra_ns.median
            )
        };
        Some(Target {
            name: "fast path (non-DHCP packets)".into(),
            goal: format!("≤ {FAST_PATH_MAX_RATIO}× the empty classifier"),
            observed,
            met: Some(missed.is_empty()),
            note,
        })
    }

    /// Share of one CPU the TCP fast path would take at the measured "nothing"
    /// rate if the program ran once per 1514-byte frame, in percent.
    fn fast_path_cpu_share(&self) -> Option<f64> {
        let extra_ns = self.case("tcp_ipv4")?.extra_ns.median.max(0.0);
        let gbit = self.throughput.as_ref()?.variants.first()?.gbit_s.median;
        let frames_per_s = gbit * 1e9 / 8.0 / 1514.0;
        Some(frames_per_s * extra_ns * 1e-9 * 100.0)
    }

    pub fn throughput_ratio(&self, key: &str) -> Option<&Stat> {
        self.throughput
            .as_ref()?
            .variants
            .iter()
            .find(|v| v.key == key)
            .map(|v| &v.ratio_to_nothing)
    }

    fn evaluate(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        if let Some(t) = self.fast_path_target() {
            targets.push(t);
        }
        if let Some(r) = self.throughput_ratio("dhcpfix") {
            let met = r.median >= THROUGHPUT_MIN_RATIO;
            targets.push(Target {
                name: "bulk TCP throughput, dhcpfix attached".into(),
                goal: format!("≥ {:.0}% of nothing", THROUGHPUT_MIN_RATIO * 100.0),
                observed: format!(
                    "{:.1}% (per-repetition ratios {:.1}–{:.1}%)",
                    r.median * 100.0,
                    r.min * 100.0,
                    r.max * 100.0
                ),
                met: Some(met),
                note: if met {
                    let mut note = format!(
                        "no cost measurable: the per-repetition ratios spread over {:.0} points on this \
                         loaded machine",
                        (r.max - r.min) * 100.0
                    );
                    if let Some(share) = self.fast_path_cpu_share() {
                        let _ = write!(
                            note,
                            "; even one program run per 1514-byte frame at this rate would cost {share:.2}% \
                             of one CPU (with TSO the device sees far fewer, larger packets)"
                        );
                    }
                    note
                } else if r.max >= THROUGHPUT_MIN_RATIO {
                    "the median misses, but the per-repetition ratios reach the goal: the difference is \
                     within the run-to-run noise of this shared machine"
                        .into()
                } else {
                    "dhcpfix costs measurable throughput on this machine".into()
                },
            });
        }
        if let Some(s) = &self.scale {
            let cold = &s.cold_attach;
            let met = cold.median_ms <= COLD_ATTACH_MAX_MS;
            targets.push(Target {
                name: "one cold `dhcpfix attach`".into(),
                goal: format!("≤ {COLD_ATTACH_MAX_MS:.0} ms median"),
                observed: format!(
                    "{:.1} ms median, p99 {:.1} ms over {} calls (the first, which loads the program: {:.1} ms)",
                    cold.median_ms,
                    cold.p99_ms,
                    cold.samples_ms.len(),
                    cold.first_ms.median
                ),
                met: Some(met),
                note: if met {
                    "what a libvirt hook adds to each VM start".into()
                } else {
                    "process start, opening the pinned program and maps, and the tcx attach take longer \
                     than the goal on this machine"
                        .into()
                },
            });
            let full = s.taps >= TAPS_FOR_TARGET;
            let mut taps = |how: &str, secs: Option<&Stat>, note: String| {
                targets.push(Target {
                    name: format!("{TAPS_FOR_TARGET} taps attached, {how}"),
                    goal: format!("≤ {ALL_TAPS_MAX_S:.0} s"),
                    observed: match secs {
                        Some(t) => format!("{} s for {} taps", spread(t, 2), s.taps),
                        None => "not measured".into(),
                    },
                    met: secs.filter(|_| full).map(|t| t.median <= ALL_TAPS_MAX_S),
                    note: if full {
                        note
                    } else {
                        format!("quick run with {} taps: not comparable", s.taps)
                    },
                });
            };
            taps(
                "one cold process per tap",
                Some(&cold.total_s),
                "sequential, as hooks at VM starts would be".into(),
            );
            taps(
                "one command naming every tap",
                Some(&s.one_command_s),
                String::new(),
            );
            taps(
                "by the agent",
                s.agent.all_attached_s.as_ref(),
                s.agent.note.clone(),
            );
        }
        if let Some(st) = &self.storm {
            targets.push(Target {
                name: "DHCP storm: counters exact, checksums valid".into(),
                goal: "filled = datagrams sent, errors = 0, every captured checksum verifies".into(),
                observed: format!(
                    "{:.0} datagrams/s achieved (target {}/s)",
                    st.achieved_rate.median, st.target_rate
                ),
                met: Some(st.counters_exact && st.checksums_ok),
                note: if st.achieved_rate.median < st.target_rate as f64 * 0.95 {
                    "the single sender thread could not reach the target rate next to iperf3 on this \
                     machine; the counters are exact at the rate it reached"
                        .into()
                } else {
                    String::new()
                },
            });
        }
        targets
    }

    /// The report in `dir`'s bench.json, if there is one of this schema.
    pub fn read(dir: &Path) -> Option<Report> {
        let text = fs::read_to_string(dir.join(JSON_FILE)).ok()?;
        // Schema 3 only added `namespaces`: a schema 2 report reads as one
        // without that section.
        serde_json::from_str::<Report>(&text)
            .ok()
            .filter(|r| r.schema == SCHEMA || r.schema == 2)
    }

    /// Fills the sections this run did not measure from `earlier` (the
    /// report it replaces), noting where each came from.
    pub fn keep_from(&mut self, earlier: Report) {
        let note = |section: &str, from: &Report| KeptSection {
            section: section.into(),
            generated_utc: from.generated_utc.clone(),
            load_start: from.machine.load_start,
            load_end: from.machine.load_end,
        };
        let took = [
            ("prog_cost", take_missing(&mut self.prog_cost, &earlier.prog_cost)),
            (
                "throughput",
                take_missing(&mut self.throughput, &earlier.throughput),
            ),
            ("scale", take_missing(&mut self.scale, &earlier.scale)),
            ("storm", take_missing(&mut self.storm, &earlier.storm)),
            (
                "namespaces",
                take_missing(&mut self.namespaces, &earlier.namespaces),
            ),
        ];
        let mut kept: Vec<KeptSection> = took
            .iter()
            .filter(|(_, took)| *took)
            .map(|(section, _)| note(section, &earlier))
            .collect();
        // A section kept twice keeps its first origin.
        for k in &mut kept {
            if let Some(older) = earlier.kept.iter().find(|o| o.section == k.section) {
                *k = older.clone();
            }
        }
        self.kept = kept;
    }

    /// Writes bench.json, BENCHMARKS.md and bench.svg into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(BenchError::io("mkdir", dir))?;
        let json = serde_json::to_string_pretty(self).map_err(|e| BenchError::Parse {
            what: "report".into(),
            detail: e.to_string(),
        })?;
        write_file(&dir.join(JSON_FILE), json.as_bytes())?;
        chart::draw(self, &dir.join(CHART_FILE))?;
        write_file(&dir.join(MARKDOWN_FILE), self.markdown().as_bytes())
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "# dhcpfix benchmarks\n");
        let _ = writeln!(
            md,
            "Generated by `cargo xtask bench` on {} in {:.1} minutes of measurement. \
             Raw numbers: [`{JSON_FILE}`]({JSON_FILE}); chart: [`{CHART_FILE}`]({CHART_FILE}).\n",
            self.generated_utc,
            self.wall_time_s / 60.0
        );
        if self.quick {
            let _ = writeln!(
                md,
                "> **Quick run** (`--quick`): tiny repeat counts, 10 taps, 1 s runs. A smoke test of the \
                 bench, not a measurement.\n"
            );
        }
        // One note per earlier run the kept sections come from.
        let mut origins: Vec<&KeptSection> = Vec::new();
        for k in &self.kept {
            if !origins.iter().any(|o| o.generated_utc == k.generated_utc) {
                origins.push(k);
            }
        }
        for o in origins {
            let sections: Vec<String> = self
                .kept
                .iter()
                .filter(|k| k.generated_utc == o.generated_utc)
                .map(|k| format!("`{}`", k.section))
                .collect();
            let _ = writeln!(
                md,
                "> Not from this run: {} ({} of this report), measured on {} (load average {:.2} / \
                 {:.2} / {:.2} at the start of that run, {:.2} / {:.2} / {:.2} at its end) and kept by \
                 a run with `--only`.\n",
                sections.join(", "),
                if sections.len() == 1 {
                    "a section"
                } else {
                    "sections"
                },
                o.generated_utc,
                o.load_start[0],
                o.load_start[1],
                o.load_start[2],
                o.load_end[0],
                o.load_end[1],
                o.load_end[2]
            );
        }
        let _ = writeln!(
            md,
            "Every figure is the median of repeated runs, followed by its range (min–max). Every \
             comparison is a ratio taken within one repetition, with the variants interleaved in a \
             rotated order, so a burst of load elsewhere on the machine hits all variants of a \
             repetition alike.\n"
        );
        self.md_targets(&mut md);
        let _ = writeln!(md, "## Machine\n");
        let _ = writeln!(md, "| | |\n|---|---|");
        let _ = writeln!(md, "| CPUs (`nproc`) | {} |", m.nproc);
        let _ = writeln!(md, "| CPU model | {} |", m.cpu_model);
        let _ = writeln!(md, "| kernel | {} |", m.kernel);
        let _ = writeln!(md, "| memory | {} MiB |", m.mem_total_mib);
        let _ = writeln!(
            md,
            "| load average (1/5/15 min) | {:.2} / {:.2} / {:.2} at the start, {:.2} / {:.2} / {:.2} at the end |",
            m.load_start[0], m.load_start[1], m.load_start[2], m.load_end[0], m.load_end[1], m.load_end[2]
        );
        let _ = writeln!(
            md,
            "\nThe machine is a small shared VM: other engineers were compiling on it during the run \
             (see the load average), which is what the spreads show and why the ratios are taken \
             within repetitions.\n"
        );
        self.md_prog_cost(&mut md);
        self.md_throughput(&mut md);
        self.md_scale(&mut md);
        self.md_storm(&mut md);
        self.md_namespaces(&mut md);
        self.md_how(&mut md);
        let _ = writeln!(md, "## Chart\n\n![dhcpfix benchmarks]({CHART_FILE})");
        md
    }

    fn md_targets(&self, md: &mut String) {
        let _ = writeln!(md, "## Targets\n");
        let _ = writeln!(
            md,
            "| target | goal | observed | met | why / note |\n|---|---|---|---|---|"
        );
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {met} | {} |",
                t.name, t.goal, t.observed, t.note
            );
        }
        let _ = writeln!(md);
    }

    fn md_prog_cost(&self, md: &mut String) {
        let Some(pc) = &self.prog_cost else { return };
        let id = |p: prog_cost::Program| pc.program(p).map_or(0, |p| p.id);
        let _ = writeln!(md, "## 1. Per-packet cost in the kernel\n");
        let _ = writeln!(
            md,
            "`BPF_PROG_TEST_RUN`, {} runs per call (the kernel reports the mean, in whole ns), {} calls \
             per case. **The program measured is the one attached**: a real `dhcpfix attach {}` in a \
             bench namespace loads and pins it; the bench opens that pin (`<pin-dir>/prog`, id {}, the \
             one program on the tap's tcx egress hook: ids {:?}) and runs it with the skb's device set \
             to the tap (ifindex {}), so it finds the tap's configuration and watched ports in its own \
             pinned maps. A probe run showed it reads the skb's state from the kernel (test mode {}). \
             The floor is the empty classifier of the same object, loaded the same way (the kernel's \
             layout, test mode off, the pin directory's maps), pinned next to it (id {}) and run the \
             same way. Its twin on the tap's tcx ingress hook, which records what the guest sends \
             (`<pin-dir>/prog-ingress`, id {}), runs the same way (rows *attached (ingress)*). \
             Fast-path frames are full-size (1514 bytes; ARP 60).\n",
            pc.repeat,
            pc.repetitions,
            pc.interface,
            id(prog_cost::Program::Attached),
            pc.tcx_egress_ids,
            pc.ifindex,
            if pc.attached_test_mode { "**on**" } else { "off" },
            id(prog_cost::Program::Floor),
            id(prog_cost::Program::Ingress),
        );
        let _ = writeln!(
            md,
            "| case | program | frame bytes | ns/packet | IQR | × empty | + ns over empty |\n|---|---|---|---|---|---|---|"
        );
        for c in &pc.cases {
            let program = match c.program {
                prog_cost::Program::TestMode => "*test mode*",
                p => p.describe(),
            };
            let _ = writeln!(
                md,
                "| {} | {program} | {} | {} | {} | {} | {} |",
                c.label,
                c.frame_bytes,
                spread(&c.ns, 0),
                iqr(&c.ns, 0),
                spread(&c.ratio_to_empty, 2),
                spread(&c.extra_ns, 0)
            );
        }
        let gap = match (
            pc.case(prog_cost::DHCP_VALID),
            pc.case(prog_cost::DHCP_VALID_TEST_MODE),
        ) {
            (Some(real), Some(test)) => {
                format!(" (here {:.0} ns by the medians)", real.ns.median - test.ns.median)
            }
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "\nRows in *test mode* run the classifier loaded for tests (`DHCPFIX_TEST_MODE = 1`, id {}, \
             its own unpinned maps, on loopback): a test run cannot make a `CHECKSUM_PARTIAL` skb on an \
             offloading device, so the fill path runs only there, with the skb's state taken from \
             `skb->mark` instead of read from the kernel. The DHCP reply with a complete checksum runs \
             on both programs: the difference{gap} is the cost of those kernel reads, which the fill \
             rows leave out.\n",
            id(prog_cost::Program::TestMode),
        );
        md_tracking(md, pc);
        md_bpftool(md, pc);
        let _ = writeln!(
            md,
            "| program | id | pinned at | xlated | jited |\n|---|---|---|---|---|"
        );
        for p in &pc.programs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} B | {} B |",
                p.program.describe(),
                p.id,
                if p.pin.is_empty() {
                    "(not pinned)".to_string()
                } else {
                    format!("`{}`", p.pin)
                },
                p.xlated_bytes,
                p.jited_bytes
            );
        }
        let _ = writeln!(md);
    }

    fn md_throughput(&self, md: &mut String) {
        let Some(t) = &self.throughput else { return };
        let _ = writeln!(md, "## 2. Bulk TCP throughput\n");
        let _ = writeln!(
            md,
            "{}; {} s per run, {} repetitions of the four set-ups, each run on a fresh veth pair. \
             A veth pair stands in for a tap here: like a tap with an offloading guest, it has tx \
             checksum offload and TSO, so dhcpfix sees large GSO packets.\n",
            t.path, t.secs, t.repetitions
        );
        let _ = writeln!(md, "| set-up | how | Gbit/s | × nothing |\n|---|---|---|---|");
        for v in &t.variants {
            let _ = writeln!(
                md,
                "| {} | `{}` | {} | {} |",
                v.label,
                v.how,
                spread(&v.gbit_s, 2),
                spread(&v.ratio_to_nothing, 3)
            );
        }
        let _ = writeln!(md);
    }

    fn md_scale(&self, md: &mut String) {
        let Some(s) = &self.scale else { return };
        let c = &s.cold_attach;
        let _ = writeln!(md, "## 3. {} taps\n", s.taps);
        let _ = writeln!(
            md,
            "{} persistent taps in a bench-owned namespace (created and set up in {} s with \
             `ip -batch`); dhcpfix runs inside that namespace with a pin directory on a bench-owned \
             bpffs. Each way of attaching starts from fresh taps and an empty pin directory; the \
             ways are repeated {} times, in a rotated order. Times are medians (min–max) over the \
             repetitions.\n",
            s.taps,
            spread(&s.tap_creation_s, 2),
            s.repetitions
        );
        let _ = writeln!(md, "| what | time |\n|---|---|");
        let _ = writeln!(
            md,
            "| one cold `dhcpfix attach tapN` per tap, all {} in sequence | {} s total |",
            s.taps,
            spread(&c.total_s, 2)
        );
        let _ = writeln!(
            md,
            "| one cold `dhcpfix attach tapN` ({} calls) | median {:.1} ms, p99 {:.1} ms, min–max {:.1}–{:.1} ms |",
            c.samples_ms.len(),
            c.median_ms,
            c.p99_ms,
            c.min_ms,
            c.max_ms
        );
        let _ = writeln!(
            md,
            "| the first of each repetition (loads and pins the program) | {} ms |",
            spread(&c.first_ms, 1)
        );
        let _ = writeln!(
            md,
            "| one `dhcpfix attach tap0 … tap{}` | {} s |",
            s.taps.saturating_sub(1),
            spread(&s.one_command_s, 2)
        );
        let k = &s.kernel_attach;
        let _ = writeln!(
            md,
            "| the kernel's part alone: one `BPF_LINK_CREATE` (tcx egress) from the bench process, on {} taps of a second namespace per repetition, interleaved with the first cold attaches | median {:.1} ms, p99 {:.1} ms, min–max {:.1}–{:.1} ms |",
            k.taps, k.median_ms, k.p99_ms, k.min_ms, k.max_ms
        );
        let a = &s.agent;
        match &a.all_attached_s {
            Some(t) => {
                let _ = writeln!(
                    md,
                    "| agent `dhcpfix run --iface 'tap*'`: start until all attached | {} s |",
                    spread(t, 2)
                );
                if let Some(rss) = &a.rss_kib {
                    let mib = |k: f64| k / 1024.0;
                    let _ = writeln!(
                        md,
                        "| agent RSS (VmRSS) with {} taps | {:.1} ({:.1}–{:.1}) MiB |",
                        s.taps,
                        mib(rss.median),
                        mib(rss.min),
                        mib(rss.max)
                    );
                }
                if let Some(ms) = &a.new_tap_ms {
                    let _ = writeln!(
                        md,
                        "| agent: one more tap, from `ip tuntap add` until attached | {} ms |",
                        spread(ms, 1)
                    );
                }
            }
            None => {
                let _ = writeln!(md, "| agent (`dhcpfix run`) | {} |", a.note);
            }
        }
        let _ = writeln!(
            md,
            "\nPer tap, a cold process takes {:.1} ms (median) and one command naming every tap \
             {:.1} ms; the bare kernel attach alone takes {:.1} ms. Attaching a tcx program waits for \
             an RCU grace period while the kernel swaps the device's program array, which is why \
             the time per tap is mostly the kernel's, varies with the load, and hardly shrinks by \
             batching taps into one process. Process start, opening the pins and the map updates \
             make up the rest.",
            c.median_ms,
            s.one_command_s.median * 1e3 / s.taps.max(1) as f64,
            k.median_ms
        );
        let km = &s.kernel_memory;
        let _ = writeln!(
            md,
            "\nKernel memory (`memlock` in `/proc/self/fdinfo` of the program and of every map it \
             uses, found through the program's map ids), after attaching all {} taps: **{}** in total.\n",
            s.taps,
            kib(km.total_bytes)
        );
        let _ = writeln!(md, "| object | max entries | memlock |\n|---|---|---|");
        let _ = writeln!(md, "| program | | {} |", kib(km.prog_memlock_bytes));
        for map in &km.maps {
            let _ = writeln!(
                md,
                "| map `{}` | {} | {} |",
                map.name,
                map.max_entries,
                kib(map.memlock_bytes)
            );
        }
        let _ = writeln!(
            md,
            "\nThe hash maps are preallocated for all their entries, so this does not grow with the \
             number of taps; the tcx links themselves (one small kernel object per tap) are not \
             charged to memlock and not included.\n"
        );
    }

    fn md_storm(&self, md: &mut String) {
        let Some(st) = &self.storm else { return };
        let _ = writeln!(md, "## 4. DHCP reply storm under bulk traffic\n");
        let _ = writeln!(
            md,
            "A UDP socket in the sending namespace sends DHCP ACKs ({} bytes) from port 67 to port 68 \
             at a target of {} per second for {} s, over the veth with dhcpfix attached, while iperf3 \
             bulk TCP runs through the same device. veth has checksum offload, so every datagram \
             leaves as a `CHECKSUM_PARTIAL` skb and is filled by the real (non-test) program. A raw \
             packet socket on the receiving side captures what it can of them and verifies each UDP \
             checksum in userspace. Control: the same storm for {:.1} s without dhcpfix (and \
             without bulk traffic): {} of {} captured datagrams failed the check, as they must.\n",
            st.dhcp_bytes,
            st.target_rate,
            st.secs,
            st.control.secs,
            st.control.checksum_bad,
            st.control.captured
        );
        let _ = writeln!(
            md,
            "Achieved: **{}** datagrams/s; bulk TCP meanwhile {} Gbit/s.\n",
            spread(&st.achieved_rate, 0),
            spread(&st.bulk_gbit_s, 2)
        );
        let _ = writeln!(
            md,
            "| run | sent | send errors | seen | filled | errors | captured | bad checksums |\n|---|---|---|---|---|---|---|---|"
        );
        for (i, r) in st.runs.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                i + 1,
                r.sent,
                r.send_errors,
                r.counters.seen,
                r.counters.filled,
                r.counters.errors,
                r.captured,
                r.checksum_bad
            );
        }
        let _ = writeln!(
            md,
            "\nCounters exact (`filled` = datagrams sent = `seen`, `errors` = 0) in every run: **{}**; \
             every captured checksum valid: **{}**.\n",
            if st.counters_exact { "yes" } else { "no" },
            if st.checksums_ok { "yes" } else { "no" }
        );
    }

    fn md_namespaces(&self, md: &mut String) {
        let Some(n) = &self.namespaces else { return };
        let taps = n.namespaces * n.taps_per_namespace;
        let mib = |k: u64| k as f64 / 1024.0;
        let _ = writeln!(
            md,
            "## 5. Every namespace: {} namespaces of {} taps\n",
            n.namespaces, n.taps_per_namespace
        );
        let _ = writeln!(
            md,
            "One `dhcpfix run --netns all --iface 'dfbn*'` in the host's own namespace, as the \
             systemd unit and the DaemonSet run it, over {} bench namespaces (`ip netns add`) with {} \
             persistent taps each ({taps} taps; a KubeVirt node with {} pods has as many \
             namespaces). The namespaces and taps are made first, without the agent (in {:.1} s); \
             then the agent starts and attaches to every tap. One run, not repeated: the churn \
             below is its own series of {} samples.\n",
            n.namespaces, n.taps_per_namespace, n.namespaces, n.topology_s, n.churn.attach.taps
        );
        let _ = writeln!(md, "| what | figure |\n|---|---|");
        let _ = writeln!(
            md,
            "| agent start until all {taps} taps attached | {:.1} s ({:.1} ms per tap) |",
            n.all_attached_s,
            n.all_attached_s * 1e3 / taps.max(1) as f64
        );
        let i = &n.idle;
        let _ = writeln!(
            md,
            "| agent at idle, {:.0} s with all attached: CPU, RSS | {:.2}% of one CPU, {:.1} MiB |",
            i.window_s,
            i.cpu_percent,
            mib(i.rss_kib)
        );
        let _ = writeln!(
            md,
            "| processes on the machine (the agent looks at each one's network namespace every 2 s, \
             for namespaces only a process holds: most of the idle CPU) | {} |",
            n.processes
        );
        let c = &n.churn;
        let _ = writeln!(
            md,
            "| churn: {} namespaces replaced at {} per second (the oldest deleted, a new one made \
             with its {} taps) | {:.1} s until the last new tap was attached |",
            c.namespaces, c.per_s, n.taps_per_namespace, c.wall_s
        );
        let _ = writeln!(
            md,
            "| churn: a new tap, from its creation until attached ({} taps) | **p50 {:.1} ms, p99 \
             {:.1} ms**, max {:.1} ms |",
            c.attach.taps, c.attach.p50_ms, c.attach.p99_ms, c.attach.max_ms
        );
        let _ = writeln!(
            md,
            "| agent during the churn: CPU, RSS at the end (peak) | {:.1}% of one CPU, {:.1} MiB \
             ({:.1} MiB) |",
            c.agent.cpu_percent,
            mib(c.agent.rss_kib),
            mib(c.agent.rss_max_kib)
        );
        let _ = writeln!(
            md,
            "| pins and map entries left by the {} deleted namespaces | none (checked) |",
            c.namespaces
        );
        let _ = writeln!(
            md,
            "\nA new tap is timed from the moment it exists (`TUNSETIFF` returned in its namespace) \
             until its link pin appears (the agent pins a link right after the kernel attached it), \
             polled every millisecond. The first tap of a new namespace waits for the agent to find \
             the namespace (inotify on `/run/netns`), give it an id and read its interfaces; every \
             tcx attach waits for an RCU grace period, and the agent attaches one interface at a \
             time (egress, then ingress), so taps that arrive together queue.\n"
        );
        let km = &n.kernel_memory;
        let _ = writeln!(
            md,
            "Kernel memory, `memlock` of the program and of every map it uses (as in section 3), \
             with all {taps} taps attached: **{}** in total (program {}).\n",
            kib(km.total_bytes),
            kib(km.prog_memlock_bytes)
        );
        let _ = writeln!(
            md,
            "`/proc/meminfo`, in KiB: how each field moved when the {} namespaces and their taps \
             were made, and then when the agent attached to them (its program and maps, their \
             entries, two tcx links per tap, its own sockets). A negative `MemAvailable` is memory \
             taken. The machine is shared, so other work moves these too: read them as orders of \
             magnitude.\n",
            n.namespaces
        );
        let _ = writeln!(
            md,
            "| field | namespaces and taps | then dhcpfix |\n|---|---|---|"
        );
        for d in &n.meminfo {
            let _ = writeln!(md, "| {} | {:+} | {:+} |", d.field, d.topology_kib, d.dhcpfix_kib);
        }
        let _ = writeln!(md);
        self.md_container(md, n);
    }

    fn md_container(&self, md: &mut String, n: &Namespaces) {
        let _ = writeln!(
            md,
            "### In the container image
"
        );
        let Some(c) = &n.container else {
            let _ = writeln!(
                md,
                "Not measured in this run: podman or the image (`cargo xtask image`) was missing.\n"
            );
            return;
        };
        let _ = writeln!(
            md,
            "The agent above stopped (SIGTERM: its {} attachments stay), and `{}` ran as \
             deploy/kubernetes/daemonset.yaml runs it (podman: host PID and network, read-only \
             root, capabilities {} and no others, the bpffs and `/run/netns` mounted), with the \
             same arguments; it adopts every attachment, as a DaemonSet pod that replaces a host \
             agent or an older pod does. CPU and RSS are its process's, read in the host's `/proc`.\n",
            c.attachments,
            c.image,
            c.capabilities.join(", ")
        );
        let _ = writeln!(md, "| what | figure |\n|---|---|");
        let _ = writeln!(
            md,
            "| image size (one layer: the static binary) | **{:.2} MB** |",
            c.image_bytes as f64 / 1e6
        );
        let _ = writeln!(
            md,
            "| `podman run` until the agent runs, {} attachments adopted | {:.1} s |",
            c.attachments, c.ready_s
        );
        let _ = writeln!(
            md,
            "| agent at idle, {:.0} s: CPU, RSS | **{:.2}% of one CPU, {:.1} MiB** |\n",
            c.idle.window_s,
            c.idle.cpu_percent,
            c.idle.rss_kib as f64 / 1024.0
        );
        let _ = writeln!(
            md,
            "deploy/kubernetes/daemonset.yaml's requests and limits come from these figures and \
             section 5's churn peak.\n"
        );
    }

    fn md_how(&self, md: &mut String) {
        let _ = writeln!(md, "## How measured\n");
        let lines = [
            "`cargo xtask bench` runs the set-up, builds `dhcpfix` and `dhcpfix-bench` in release mode and runs `dhcpfix-bench --dhcpfix target/release/dhcpfix --out .`; `--only SECTION` and `--quick` exist for development.",
            "**Per-packet cost**: a tap in a bench namespace, a real `dhcpfix attach` of it (fill mode, ports 68 and 67) with a pin directory on the bench's bpffs; the bench opens the pinned program, checks by id that it is the one on the tap's tcx egress hook and, with one probe run, that it ignores the test marks in `skb->mark` (test mode off), and runs it with `BPF_PROG_TEST_RUN` from inside the namespace with an `__sk_buff` whose `ifindex` is the tap's, so the skb's device is the tap and the program finds its configuration. The kernel times the loop and reports the mean per run in whole nanoseconds. The empty classifier (`dhcpfix_empty`, same object, loaded as `dhcpfix attach` loads the classifier, pinned) is the floor; it includes the test-run loop's own per-run overhead, so `+ ns over empty` is what dhcpfix itself adds. `bpftool prog run pinned` runs the floor and the TCP and UDP frames from the same pins and files in the same rotation, as an independent check. Every call's verdict, output frame (bench calls) and counters are checked (non-DHCP frames unchanged and uncounted; a DHCP reply with a complete checksum unchanged and counted `valid` on the tap; every fill counted `filled` and its checksum verified). The fill rows run in test mode (see section 1); section 4 exercises the real fill path. If this build has the fill-event ring buffer, it is full after its first few thousand events in a test run, so later runs pay only the failed reservation.",
            "**Throughput**: namespaces A and B joined by a veth pair, permanent neighbour entries; iperf3 server in B, client in A, one TCP stream; Gbit/s as the receiver counted it. The four set-ups are interleaved within each repetition and each run gets a fresh pair and pin directory; each set-up is checked before the run (a tcx program on the device, `tx-checksumming: off`, the rule listed by `iptables -S`).",
            "**Scale**: wall time of each `dhcpfix attach` process from spawn to exit (it joins the namespace with `setns` before exec); all taps are checked for a tcx egress program afterwards with `BPF_PROG_QUERY`. The agent is timed from its spawn until `BPF_PROG_QUERY` finds a program on every tap.",
            "**Storm**: the sender paces itself to the target rate (flat out if it cannot keep up); `filled` and `errors` are read with `dhcpfix stats --json` and compared with the number of `send` calls that succeeded. The receiver's packet socket uses a classic BPF filter for UDP port 68, so it does not copy the bulk traffic.",
            "Everything runs in namespaces the bench creates (`dfb-<pid>-*`) on 10.231.0.0/24, with pins on a bpffs the bench mounts under `/run/dhcpfix-bench/<pid>/`; all of it is removed at the end, on error, on Ctrl-C/SIGTERM, and (after a SIGKILL) at the start of the next run.",
        ];
        for l in lines {
            let _ = writeln!(md, "- {l}");
        }
        let _ = writeln!(md);
    }
}

/// What following the guests (`dhcpfix leases`) costs per DHCP packet, and
/// that packets which are not DHCP pay nothing for it on either hook.
fn md_tracking(md: &mut String, pc: &ProgCost) {
    let extra = |key: &str| pc.case(key).map(|c| c.extra_ns.median);
    let (Some(ack), Some(request), Some(tcp_in), Some(tcp_out)) = (
        extra(prog_cost::DHCP_VALID),
        extra(prog_cost::INGRESS_REQUEST),
        extra(prog_cost::INGRESS_TCP_IPV4),
        extra("tcp_ipv4"),
    ) else {
        return;
    };
    let v6 = |key: &str, what: &str| extra(key).map_or(String::new(), |ns| format!(", {what} {ns:.0} ns"));
    let _ = writeln!(
        md,
        "**What following the guests costs.** Since issue 11 the classifier records each DHCP \
         message in its guest's state (a hash lookup and an update of one map entry, and the first \
         128 bytes of the options copied). Over the empty classifier, by the medians of the paired \
         differences: the egress program on a DHCP ACK it records (checksum complete: parsed, \
         decided, recorded, nothing filled) {ack:.0} ns{}; the ingress program on a DHCP REQUEST \
         it records {request:.0} ns{}. A packet that is not DHCP pays for none of it: the ingress \
         program leaves a full-size IPv4 TCP segment after {tcp_in:.0} ns over the floor, the \
         egress program after {tcp_out:.0} ns (the other fast-path rows: the table). There is no \
         build without tracking to compare with; the per-packet cost of the fill itself is in the \
         *test mode* rows.\n",
        v6(prog_cost::DHCPV6_VALID, "on a DHCPv6 REPLY"),
        v6(prog_cost::INGRESS_SOLICIT, "on a DHCPv6 SOLICIT"),
    );
}

/// The bench's figures next to bpftool's, for the frames bpftool ran.
fn md_bpftool(md: &mut String, pc: &ProgCost) {
    if pc.bpftool.is_empty() {
        return;
    }
    let _ = writeln!(md, "### The same frames through bpftool\n");
    let _ = writeln!(
        md,
        "`bpftool prog run pinned PIN data_in FRAME repeat {}` ({}), on the same pins and frame \
         files, inside the namespace, in the same rotation as the bench's own calls ({} rounds; \
         bpftool passes no `__sk_buff`, so its skb's device is loopback). `paired`: the median over \
         rounds of frame − floor within a round; `min − min`: the best round of the frame minus the \
         best round of the floor, unpaired; the mean of the paired differences resolves fractions \
         of the kernel's whole nanoseconds.\n",
        pc.repeat, pc.bpftool_version, pc.repetitions
    );
    let _ = writeln!(
        md,
        "| frame | measured by | ns/packet | + ns over floor, paired | mean of paired | min − min |\n|---|---|---|---|---|---|"
    );
    for b in &pc.bpftool {
        let Some(c) = pc.case(&b.key) else { continue };
        for (tool, r) in [("bench", c), ("bpftool", b)] {
            let _ = writeln!(
                md,
                "| {} | {tool} | {} | {} | {:.1} | {:.0} |",
                c.label,
                spread(&r.ns, 0),
                spread(&r.extra_ns, 0),
                r.extra_ns.mean,
                r.extra_of_minima_ns
            );
        }
    }
    let _ = writeln!(md);
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).map_err(BenchError::io("write", path))
}

/// Fills `mine` with `earlier` when this run left it empty; says whether it
/// did.
fn take_missing<T: Clone>(mine: &mut Option<T>, earlier: &Option<T>) -> bool {
    let take = mine.is_none() && earlier.is_some();
    if take {
        mine.clone_from(earlier);
    }
    take
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run with `--only prog-cost` keeps every other section of the
    /// report it replaces (the committed bench.json has them all), and
    /// says so.
    #[test]
    fn an_only_run_keeps_every_other_section() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench.json");
        let earlier: Report = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        assert!(earlier.namespaces.is_some(), "{path} has every section");
        let mut now = earlier.clone();
        now.generated_utc = "now".into();
        (now.throughput, now.scale, now.storm, now.namespaces) = (None, None, None, None);
        now.keep_from(earlier);
        assert!(now.throughput.is_some() && now.scale.is_some() && now.storm.is_some());
        assert!(now.namespaces.is_some());
        let kept: Vec<&str> = now.kept.iter().map(|k| k.section.as_str()).collect();
        assert_eq!(kept, ["throughput", "scale", "storm", "namespaces"]);
    }
}
