//! A quick run of the whole benchmark (`--quick`: tiny repeat counts, 10
//! taps, 1 s iperf3 runs, a small storm), so `cargo xtask bench` cannot rot:
//! the report must be complete and well-formed, and the storm's counters
//! exact. Needs root; uses the `dhcpfix` binary cargo built next to this
//! test (cargo test --workspace builds it).

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use dhcpfix_bench::{prog_cost, report::Report, Options};
use dhcpfix_lab::kit::privileged;

/// `target/<profile>/dhcpfix`, next to `target/<profile>/deps/<this test>`.
fn dhcpfix_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/");
    profile_dir.join("dhcpfix")
}

fn finite_positive(what: &str, v: f64) {
    assert!(v.is_finite() && v > 0.0, "{what}: {v}");
}

#[test]
fn quick_bench_writes_a_complete_report() {
    if !privileged("quick_bench_writes_a_complete_report") {
        return;
    }
    let bin = dhcpfix_binary();
    assert!(
        bin.is_file(),
        "{} missing: build it first (cargo build -p dhcpfix), or run cargo test --workspace",
        bin.display()
    );
    let out = std::env::temp_dir().join(format!("dhcpfix-bench-smoke-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    let started = Instant::now();
    let returned = dhcpfix_bench::run(&Options {
        quick: true,
        out: out.clone(),
        dhcpfix: bin,
        only: Vec::new(),
    })
    .unwrap_or_else(|e| panic!("quick bench failed: {e}"));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "quick bench took {took:?}");

    // The JSON parses back into the report it was written from.
    let json = fs::read_to_string(out.join("bench.json")).expect("bench.json");
    let report: Report = serde_json::from_str(&json).expect("bench.json parses");
    assert_eq!(report.schema, dhcpfix_bench::report::SCHEMA);
    assert!(report.quick);
    assert_eq!(report.targets.len(), returned.targets.len());
    assert!(report.machine.nproc > 0 && !report.machine.kernel.is_empty());

    // Every figure present.
    let pc = report.prog_cost.as_ref().expect("prog_cost");
    let mut keys = vec![prog_cost::EMPTY, prog_cost::DHCP_VALID];
    keys.extend(prog_cost::FAST_PATH);
    keys.extend(["dhcp_fill_300", "dhcp_fill_576", "dhcp_fill_1472"]);
    for key in keys {
        let case = pc
            .cases
            .iter()
            .find(|c| c.key == key)
            .unwrap_or_else(|| panic!("case {key}"));
        assert_eq!(case.ns.samples.len(), pc.repetitions, "{key}");
        finite_positive(key, case.ns.median);
        finite_positive(key, case.ratio_to_empty.median);
    }
    let fill = pc.cases.iter().find(|c| c.key == "dhcp_fill_1472").unwrap();
    let empty = pc.cases.iter().find(|c| c.key == prog_cost::EMPTY).unwrap();
    assert!(
        fill.ns.median > empty.ns.median,
        "a 1472-byte fill must cost more than nothing"
    );

    let tp = report.throughput.as_ref().expect("throughput");
    let keys: Vec<&str> = tp.variants.iter().map(|v| v.key.as_str()).collect();
    assert_eq!(
        keys,
        ["nothing", "dhcpfix", "ethtool_tx_off", "iptables_checksum"]
    );
    for v in &tp.variants {
        finite_positive(&v.key, v.gbit_s.median);
        finite_positive(&v.key, v.ratio_to_nothing.median);
    }

    let sc = report.scale.as_ref().expect("scale");
    assert_eq!(sc.taps, 10);
    assert_eq!(sc.cold_attach.samples_ms.len(), 10 * sc.repetitions);
    assert_eq!(sc.cold_attach.total_s.samples.len(), sc.repetitions);
    assert_eq!(sc.one_command_s.samples.len(), sc.repetitions);
    finite_positive("cold attach median", sc.cold_attach.median_ms);
    finite_positive("one command", sc.one_command_s.median);
    finite_positive("kernel attach", sc.kernel_attach.median_ms);
    assert!(
        sc.kernel_memory.prog_memlock_bytes > 0
            && sc.kernel_memory.maps.iter().any(|m| m.name == "DHCPFIX_CONFIG")
            && sc
                .kernel_memory
                .maps
                .iter()
                .any(|m| m.name.starts_with("DHCPFIX_COUNTER")),
        "kernel memory: {:?}",
        sc.kernel_memory
    );
    if sc.agent.available {
        let all = sc.agent.all_attached_s.as_ref();
        assert!(
            all.is_some_and(|s| s.samples.len() == sc.repetitions),
            "agent: {}",
            sc.agent.note
        );
        assert!(
            sc.agent.rss_kib.as_ref().is_some_and(|k| k.median > 0.0),
            "agent RSS"
        );
        assert!(sc.agent.new_tap_ms.is_some(), "agent new tap");
    }

    // The storm's counters are exact and every captured checksum verifies.
    let st = report.storm.as_ref().expect("storm");
    assert!(st.counters_exact && st.checksums_ok, "storm: {:?}", st.runs);
    assert!(st.control.captured > 0 && st.control.checksum_bad == st.control.captured);
    for run in &st.runs {
        assert!(run.sent > 0);
        assert_eq!(run.counters.filled, run.sent);
        assert_eq!(run.counters.errors, 0);
        assert!(run.checksum_ok > 0 && run.checksum_bad == 0);
    }

    let md = fs::read_to_string(out.join("BENCHMARKS.md")).expect("BENCHMARKS.md");
    for heading in [
        "## Targets",
        "## Machine",
        "## 1. Per-packet cost",
        "## 2. Bulk TCP throughput",
        "## 3. 10 taps",
        "## 4. DHCP reply storm",
        "## How measured",
    ] {
        assert!(md.contains(heading), "BENCHMARKS.md lacks {heading}");
    }
    let svg = fs::read_to_string(out.join("bench.svg")).expect("bench.svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));

    // Nothing left behind: no namespace, no run directory of this process.
    let left = dhcpfix_lab::kit::sandbox::leftovers(&dhcpfix_bench::sandbox::PLACE, std::process::id());
    assert!(left.is_empty(), "namespaces or run directories left: {left:?}");
    let _ = fs::remove_dir_all(&out);
}
