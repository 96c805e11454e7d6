//! A quick run of the whole benchmark (`--quick`: tiny repeat counts, 10
//! taps, 1 s iperf3 runs, a small storm), so `cargo xtask bench` cannot rot:
//! the report must be complete and well-formed, the storm's counters
//! exact, and the every-namespace section (10 namespaces of 2 taps, 10
//! replaced) complete; and a quick run of the per-packet section alone, which must
//! measure the program `dhcpfix attach` attached. Needs root; uses the
//! `dhcpfix` binary cargo built next to this test (cargo test --workspace
//! builds it).

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use dhcpfix_bench::{prog_cost, report::Report, Options, Section};
use dhcpfix_lab::kit::privileged;
use serde_json::{json, Value};

/// One bench per process at a time: a bench's sandbox is named after the pid.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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
    let _serial = serial();
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
    let mut keys = vec![
        prog_cost::EMPTY,
        prog_cost::DHCP_VALID,
        prog_cost::DHCP_VALID_TEST_MODE,
    ];
    keys.extend(prog_cost::FAST_PATH);
    keys.extend(prog_cost::FILL_KEYS);
    keys.extend([
        prog_cost::DHCPV6_VALID,
        prog_cost::INGRESS_REQUEST,
        prog_cost::INGRESS_SOLICIT,
    ]);
    for key in keys {
        let case = pc.case(key).unwrap_or_else(|| panic!("case {key}"));
        assert_eq!(case.ns.samples.len(), pc.repetitions, "{key}");
        finite_positive(key, case.ns.median);
        finite_positive(key, case.ratio_to_empty.median);
    }
    // The new path: the attached program, the floor loaded like it, bpftool
    // on both; test mode only where it must be.
    let attached = pc
        .program(prog_cost::Program::Attached)
        .expect("attached program");
    assert_eq!(pc.tcx_egress_ids, [attached.id]);
    let ingress = pc.program(prog_cost::Program::Ingress).expect("ingress program");
    assert_ne!(ingress.id, attached.id);
    assert!(!pc.attached_test_mode);
    assert_eq!(pc.cases.first().map(|c| c.key.as_str()), Some(prog_cost::EMPTY));
    for case in &pc.cases {
        let expected = match case.key.as_str() {
            prog_cost::EMPTY => prog_cost::Program::Floor,
            k if k.starts_with("ingress_") => prog_cost::Program::Ingress,
            k if prog_cost::FAST_PATH.contains(&k)
                || k == prog_cost::DHCP_VALID
                || k == prog_cost::DHCPV6_VALID =>
            {
                prog_cost::Program::Attached
            }
            _ => prog_cost::Program::TestMode,
        };
        assert_eq!(case.program, expected, "{}", case.key);
    }
    for key in std::iter::once(prog_cost::EMPTY).chain(prog_cost::BPFTOOL_FRAMES) {
        let b = pc
            .bpftool_case(key)
            .unwrap_or_else(|| panic!("bpftool case {key}"));
        assert_eq!(b.ns.samples.len(), pc.repetitions, "bpftool {key}");
        finite_positive(key, b.ns.median);
        assert_eq!(
            Some(b.program_id),
            pc.case(key).map(|c| c.program_id),
            "bpftool {key}"
        );
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

    // Every namespace: all attached, each new tap of the churn timed, the
    // agent measured, the kernel's memory read.
    let ns = report.namespaces.as_ref().expect("namespaces");
    assert_eq!((ns.namespaces, ns.taps_per_namespace), (10, 2));
    finite_positive("all attached", ns.all_attached_s);
    assert!(
        ns.idle.rss_kib > 0 && ns.idle.cpu_percent.is_finite(),
        "{:?}",
        ns.idle
    );
    assert_eq!(ns.churn.namespaces, 10);
    assert_eq!(ns.churn.attach.taps, 10 * 2);
    assert_eq!(ns.churn.attach.samples_ms.len(), 10 * 2);
    finite_positive("new tap p50", ns.churn.attach.p50_ms);
    assert!(ns.churn.attach.p99_ms >= ns.churn.attach.p50_ms);
    assert!(ns.churn.agent.rss_max_kib >= ns.churn.agent.rss_kib && ns.churn.agent.cpu_percent > 0.0);
    assert!(ns.kernel_memory.total_bytes > 0);
    assert_eq!(ns.meminfo.len(), 7);
    // The container's figures, where `cargo xtask test` built the image.
    if std::env::var_os("DHCPFIX_TEST_IMAGE").is_some() {
        let c = ns
            .container
            .as_ref()
            .expect("container figures with the image built");
        assert_eq!(c.attachments, 10 * 2);
        assert!(c.image_bytes > 1_000_000 && c.image_bytes < 10_000_000, "{c:?}");
        assert!(c.idle.rss_kib > 0 && c.ready_s > 0.0, "{c:?}");
        assert!(c.capabilities.iter().any(|c| c == "SYS_ADMIN"), "{c:?}");
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
        "### The same frames through bpftool",
        "## 2. Bulk TCP throughput",
        "## 3. 10 taps",
        "## 4. DHCP reply storm",
        "## 5. Every namespace: 10 namespaces of 2 taps",
        "### In the container image",
        "## How measured",
    ] {
        assert!(md.contains(heading), "BENCHMARKS.md lacks {heading}");
    }
    let svg = fs::read_to_string(out.join("bench.svg")).expect("bench.svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.contains("--netns all"),
        "the chart lacks the every-namespace panel"
    );

    // Nothing left behind: no namespace, no run directory of this process.
    let left = dhcpfix_lab::kit::sandbox::leftovers(&dhcpfix_bench::sandbox::PLACE, std::process::id());
    assert!(left.is_empty(), "namespaces or run directories left: {left:?}");
    let _ = fs::remove_dir_all(&out);
}

/// The case `key` of a list of cases in bench.json.
fn case<'a>(cases: &'a Value, key: &str) -> &'a Value {
    cases
        .as_array()
        .and_then(|cases| cases.iter().find(|c| c["key"] == key))
        .unwrap_or_else(|| panic!("no case {key} in {cases}"))
}

/// The per-packet cost is that of the program `dhcpfix attach` loaded and
/// attached (not of a copy loaded in test mode): the program the fast-path
/// and DHCP cases run has the id of the one program on the tap's tcx egress
/// hook, and ignores the test marks; the floor is another program; only
/// the fill cases run in test mode. Read as plain JSON, so that a report
/// without these records fails here rather than at compile time.
#[test]
fn per_packet_cost_runs_the_attached_program() {
    if !privileged("per_packet_cost_runs_the_attached_program") {
        return;
    }
    let _serial = serial();
    let bin = dhcpfix_binary();
    assert!(bin.is_file(), "{} missing: cargo build -p dhcpfix", bin.display());
    let out = std::env::temp_dir().join(format!("dhcpfix-bench-prog-cost-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    dhcpfix_bench::run(&Options {
        quick: true,
        out: out.clone(),
        dhcpfix: bin,
        only: vec![Section::ProgCost],
    })
    .unwrap_or_else(|e| panic!("quick per-packet bench failed: {e}"));
    let json: Value =
        serde_json::from_str(&fs::read_to_string(out.join("bench.json")).expect("bench.json")).expect("JSON");
    let pc = &json["prog_cost"];
    let id_of = |program: &str| -> u64 {
        pc["programs"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["program"] == program))
            .and_then(|p| p["id"].as_u64())
            .unwrap_or_else(|| panic!("no {program} program in {}", pc["programs"]))
    };
    let attached = id_of("attached");
    let ingress = id_of("ingress");
    let floor = id_of("floor");
    let test_mode = id_of("test_mode");
    assert_eq!(
        pc["tcx_egress_ids"],
        json!([attached]),
        "the measured program is not the one on the tap's egress hook"
    );
    assert_eq!(
        pc["attached_test_mode"],
        json!(false),
        "the measured program is in test mode"
    );
    assert!(attached != floor && attached != test_mode && floor != test_mode);
    assert!(ingress != attached && ingress != floor && ingress != test_mode);

    let runs = |cases: &Value, key: &str, program: &str, id: u64| {
        let c = case(cases, key);
        assert_eq!(c["program"], program, "{key}: {c}");
        assert_eq!(c["program_id"], id, "{key}: {c}");
        let ns = c["ns"]["median"].as_f64().unwrap_or(f64::NAN);
        assert!(ns.is_finite() && ns > 0.0, "{key}: {ns}");
    };
    let cases = &pc["cases"];
    runs(cases, prog_cost::EMPTY, "floor", floor);
    for key in prog_cost::FAST_PATH
        .into_iter()
        .chain([prog_cost::DHCP_VALID, prog_cost::DHCPV6_VALID])
    {
        if key.starts_with("ingress_") {
            runs(cases, key, "ingress", ingress);
        } else {
            runs(cases, key, "attached", attached);
        }
    }
    // The guests' requests, recorded by the ingress program.
    for key in [prog_cost::INGRESS_REQUEST, prog_cost::INGRESS_SOLICIT] {
        runs(cases, key, "ingress", ingress);
    }
    for key in [
        "dhcp_valid_300_test_mode",
        "dhcp_fill_300",
        "dhcp_fill_576",
        "dhcp_fill_1472",
    ] {
        runs(cases, key, "test_mode", test_mode);
    }
    // bpftool ran the same pinned programs on the TCP and UDP frames.
    let bpftool = &pc["bpftool"];
    runs(bpftool, prog_cost::EMPTY, "floor", floor);
    for key in ["tcp_ipv4", "udp_ipv4"] {
        runs(bpftool, key, "attached", attached);
    }
    let md = fs::read_to_string(out.join("BENCHMARKS.md")).expect("BENCHMARKS.md");
    assert!(
        md.contains("### The same frames through bpftool"),
        "BENCHMARKS.md lacks the bpftool comparison"
    );
    let _ = fs::remove_dir_all(&out);
}
