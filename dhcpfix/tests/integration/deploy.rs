//! deploy/: the Kubernetes manifests, the Prometheus alerts, the Debian
//! package and the container image, checked with the tools that consume
//! them.
//!
//! - Manifests: kubernetes-validate (the API's JSON schemas, strict) on every
//!   file and on `kubectl kustomize`'s output; the prometheus-operator
//!   objects against the operator's CRD schemas (deploy/check/crds.py); the
//!   kustomization lists every manifest; the DaemonSet's settings (what the
//!   schemas cannot say: capabilities, mounts, probes, API rules).
//! - Alerts: `promtool check rules` and `promtool test rules`, a firing and
//!   a quiet case for every alert; the PrometheusRule is generated from the
//!   rule file (xtask/src/rules.rs, included here).
//! - Debian package: installed with dpkg on this machine, its files
//!   checked, removed, purged; the file lists before and after are equal.
//! - Image: minimal (one file), and run with podman exactly as the
//!   DaemonSet runs it (capabilities, host PID and network, mounts,
//!   read-only root), on a bpffs of its own; /metrics answers; `podman stop`
//!   exits 0 and leaves the attachment pinned; one capability fewer fails.
//! - The kernel facts behind SYS_ADMIN and SYS_PTRACE (setns, /proc/PID/ns).
//!
//! `cargo xtask test` builds the image and the .deb first and passes them
//! in DHCPFIX_TEST_DEB, DHCPFIX_TEST_IMAGE and DHCPFIX_TEST_PYTHON (the
//! virtualenv with kubernetes-validate); without them those tests skip, and
//! fail under CI=true.
//!
//! The DaemonSet is written for the every-namespace agent (`--netns`,
//! `/healthz`, `/readyz`). The tests ask the image's `dhcpfix run --help`
//! whether it has `--netns` ([`contract_agent`]): an older image runs
//! without `--netns all`, and the assertions that need the new agent are
//! skipped with a line saying so.

#[path = "../../../xtask/src/rules.rs"]
mod rules;

use std::{
    collections::BTreeSet,
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use dhcpfix_lab::kit::{podman, PODMAN_ULIMITS as ULIMITS};
use serde_json::Value;

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("dhcpfix/ has a parent")
        .to_path_buf()
}

pub(crate) fn kube(file: &str) -> PathBuf {
    root().join("deploy/kubernetes").join(file)
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips with a line saying why, or fails under CI=true.
fn skip(test: &str, why: &str) {
    assert!(!ci(), "{test}: {why}, and CI=true forbids skipping");
    eprintln!("skipped {test}: {why}");
}

/// The path in environment variable `var` (set by `cargo xtask test`).
fn from_env(test: &str, var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            skip(test, &format!("{var} not set (cargo xtask test sets it)"));
            None
        }
    }
}

pub(crate) fn python(test: &str) -> Option<PathBuf> {
    from_env(test, "DHCPFIX_TEST_PYTHON").map(PathBuf::from)
}

/// Whether `tool` is on PATH (or in /usr/sbin, /sbin).
fn have(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(tool).is_file())
}

fn need_tool(test: &str, tool: &str) -> bool {
    let found = have(tool);
    if !found {
        skip(
            test,
            &format!("{tool} not installed (cargo xtask setup installs it)"),
        );
    }
    found
}

/// How long one tool may run (dpkg, podman, promtool, a Python check).
const COMMAND_LIMIT: Duration = Duration::from_secs(300);

pub(crate) fn run(cmd: &mut Command) -> Output {
    run_within(cmd, COMMAND_LIMIT)
}

/// Runs `cmd` (stdin closed), echoing it and its output; killed, and the
/// test failed, after `limit`.
pub(crate) fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let out = dhcpfix_lab::kit::process::run_unchecked(cmd, None, limit).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "$ {shown} -> {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every YAML document in `path`, as JSON (PyYAML in the virtualenv).
fn yaml_docs(python: &Path, path: &Path) -> Vec<Value> {
    let out = run_ok(
        Command::new(python)
            .arg("-c")
            .arg(
                "import json, sys, yaml\n\
         with open(sys.argv[1], encoding='utf-8') as f:\n    \
             json.dump([d for d in yaml.safe_load_all(f) if d is not None], sys.stdout)",
            )
            .arg(path),
    );
    match serde_json::from_str(&out) {
        Ok(Value::Array(docs)) => docs,
        other => panic!("{}: not a list of documents: {other:?}", path.display()),
    }
}

pub(crate) fn yaml_doc(python: &Path, path: &Path) -> Value {
    let mut docs = yaml_docs(python, path);
    assert_eq!(docs.len(), 1, "{}", path.display());
    docs.remove(0)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh work directory, removed on drop (after unmounting anything
/// mounted below it).
pub(crate) struct WorkDir(pub(crate) PathBuf);

impl WorkDir {
    pub(crate) fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dhcpfix-deploy-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = dhcpfix_lab::kit::unmount_below(&self.0);
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- manifests

/// `resources:` and the configMapGenerator's `files:` of kustomization.yaml,
/// read as plain lines (std only, so this check needs no tool).
fn kustomization_entries() -> (Vec<String>, Vec<String>) {
    let text = fs::read_to_string(kube("kustomization.yaml")).unwrap();
    let (mut resources, mut files) = (Vec::new(), Vec::new());
    let mut section = "";
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            section = if trimmed == "resources:" { "resources" } else { "" };
            if trimmed == "configMapGenerator:" {
                section = "generator";
            }
            continue;
        }
        if trimmed == "files:" && section == "generator" {
            section = "files";
            continue;
        }
        if let Some(item) = trimmed.strip_prefix("- ") {
            match section {
                "resources" => resources.push(item.to_owned()),
                "files" => files.push(item.to_owned()),
                _ => {}
            }
        } else if section == "files" {
            section = "generator";
        }
    }
    (resources, files)
}

#[test]
fn kustomization_lists_every_manifest_and_every_listed_file_exists() {
    let (resources, files) = kustomization_entries();
    assert!(resources.len() >= 6, "{resources:?}");
    assert_eq!(files, ["dhcpfix.toml"]);
    for f in resources.iter().chain(&files) {
        assert!(
            kube(f).is_file(),
            "kustomization.yaml lists {f}, which does not exist"
        );
    }
    let on_disk: BTreeSet<String> = fs::read_dir(kube(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .filter(|n| n != "kustomization.yaml")
        .collect();
    let listed: BTreeSet<String> = resources.iter().cloned().collect();
    assert_eq!(
        on_disk, listed,
        "every manifest in deploy/kubernetes must be listed"
    );
}

/// The manifests as applied: `kubectl kustomize` if kubectl is here (the
/// machine image has it; it embeds kustomize), written to a file.
fn kustomize_build(work: &WorkDir) -> Option<PathBuf> {
    if !have("kubectl") {
        eprintln!("note: no kubectl, so no `kubectl kustomize` build; the files are checked one by one");
        return None;
    }
    let out = run_ok(Command::new("kubectl").arg("kustomize").arg(kube("")));
    let path = work.0.join("built.yaml");
    fs::write(&path, out).unwrap();
    Some(path)
}

/// Kubernetes versions to validate against: an old one still in KubeVirt
/// and Harvester deployments, and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

#[test]
fn manifests_pass_the_kubernetes_api_schemas() {
    let test = "manifests_pass_the_kubernetes_api_schemas";
    let Some(python) = python(test) else { return };
    let work = WorkDir::new("validate");
    let (resources, _) = kustomization_entries();
    let mut files: Vec<PathBuf> = resources.iter().map(|f| kube(f)).collect();
    let built = kustomize_build(&work);
    files.extend(built.clone());
    for version in KUBERNETES_VERSIONS {
        let out = run(Command::new(&python)
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .args(&files));
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubernetes-validate {version}:\n{text}");
        assert!(!text.contains("ERROR"), "{text}");
        // The only objects without a schema are the prometheus-operator
        // ones (checked against the CRDs below).
        for line in text.lines().filter(|l| l.starts_with("WARN")) {
            assert!(line.contains("monitoring.coreos.com/v1"), "{line}");
        }
        for kind in ["namespace", "serviceaccount", "daemonset", "service"] {
            assert!(
                text.contains(&format!("passed for resource {kind}/dhcpfix")),
                "{kind} not validated:\n{text}"
            );
        }
        if built.is_some() {
            assert!(
                text.contains("passed for resource configmap/dhcpfix-config-"),
                "{text}"
            );
        }
    }
    // The build: the generated ConfigMap (hash-suffixed) is what the
    // DaemonSet mounts, and the image is the version's.
    if let Some(built) = built {
        let docs = yaml_docs(&python, &built);
        let cm = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .expect("a ConfigMap in the build");
        let cm_name = cm["metadata"]["name"].as_str().unwrap();
        assert!(cm_name.starts_with("dhcpfix-config-"), "{cm_name}");
        assert_eq!(
            cm["data"]["dhcpfix.toml"].as_str().unwrap(),
            fs::read_to_string(kube("dhcpfix.toml")).unwrap()
        );
        let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
        let pod = &ds["spec"]["template"]["spec"];
        let config = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .unwrap();
        assert_eq!(config["configMap"]["name"], cm_name);
        assert_eq!(
            pod["containers"][0]["image"],
            format!("localhost/dhcpfix:{}", env!("CARGO_PKG_VERSION"))
        );
        for d in &docs {
            if d["kind"] != "Namespace" {
                assert_eq!(d["metadata"]["namespace"], "dhcpfix", "{}", d["kind"]);
            }
        }
    }
}

#[test]
fn kustomization_image_tag_is_the_version() {
    let text = fs::read_to_string(kube("kustomization.yaml")).unwrap();
    assert!(
        text.contains(&format!("newTag: \"{}\"", env!("CARGO_PKG_VERSION"))),
        "kustomization.yaml's image tag is not {}",
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn prometheus_operator_objects_match_the_crd_schemas() {
    let test = "prometheus_operator_objects_match_the_crd_schemas";
    let Some(python) = python(test) else { return };
    let check = root().join("deploy/check/crds.py");
    let files = [kube("servicemonitor.yaml"), kube("prometheusrule.yaml")];
    let out = run_ok(Command::new(&python).arg(&check).args(&files));
    assert!(
        out.contains("ok   ") && out.contains("ServiceMonitor/dhcpfix"),
        "{out}"
    );
    assert!(out.contains("PrometheusRule/dhcpfix"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");

    // The check has teeth: a misspelt key and a wrong type both fail.
    let work = WorkDir::new("crds");
    let sm = fs::read_to_string(&files[0]).unwrap();
    for (what, bad) in [
        ("misspelt key", sm.replace("scrapeTimeout:", "scrapeTimout:")),
        ("port as a number", sm.replace("- port: metrics", "- port: 9788")),
    ] {
        assert_ne!(bad, sm, "{what}: the mutation did not apply");
        let path = work.0.join("bad.yaml");
        fs::write(&path, bad).unwrap();
        let out = run(Command::new(&python).arg(&check).arg(&path));
        assert_eq!(out.status.code(), Some(1), "{what} passed the CRD check");
    }

    // The PrometheusRule's groups, taken out of the object, are rules
    // Prometheus loads.
    if !need_tool(test, "promtool") {
        return;
    }
    let rule = yaml_doc(&python, &files[1]);
    let groups = work.0.join("groups.json");
    // JSON is YAML: promtool reads it.
    fs::write(&groups, serde_json::to_string(&rule["spec"]).unwrap()).unwrap();
    let out = run_ok(Command::new("promtool").args(["check", "rules"]).arg(&groups));
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
}

#[test]
fn prometheus_rule_is_generated_from_the_rules_file() {
    let rules_text = fs::read_to_string(root().join(rules::RULES)).unwrap();
    let committed = fs::read_to_string(root().join(rules::PROMETHEUS_RULE)).unwrap();
    assert!(
        committed == rules::prometheus_rule(&rules_text),
        "{} differs from what `cargo xtask manifests` makes of {}: run it",
        rules::PROMETHEUS_RULE,
        rules::RULES
    );
}

#[test]
fn alert_rules_pass_promtool_and_every_alert_has_tests_both_ways() {
    let test = "alert_rules_pass_promtool_and_every_alert_has_tests_both_ways";
    if !need_tool(test, "promtool") {
        return;
    }
    let dir = root().join("deploy/prometheus");
    let out = run_ok(
        Command::new("promtool")
            .args(["check", "rules", "dhcpfix-rules.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let out = run_ok(
        Command::new("promtool")
            .args(["test", "rules", "dhcpfix-rules.test.yml"])
            .current_dir(&dir),
    );
    assert!(out.contains("SUCCESS"), "{out}");

    let Some(python) = python(test) else { return };
    let rules = yaml_doc(&python, &dir.join("dhcpfix-rules.yml"));
    let alerts: BTreeSet<String> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(alerts.len(), 9, "{alerts:?}");
    let tests = yaml_doc(&python, &dir.join("dhcpfix-rules.test.yml"));
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for case in tests["tests"].as_array().unwrap() {
        for eval in case["alert_rule_test"].as_array().unwrap() {
            let name = eval["alertname"].as_str().unwrap().to_owned();
            let expected = eval["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected == 0 {
                quiet.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    assert_eq!(fires, alerts, "alerts without a case where they fire");
    assert_eq!(quiet, alerts, "alerts without a case where they must not fire");
    // Every alert has a severity the routing knows.
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            if rule["alert"].is_string() {
                let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
                assert!(["critical", "warning", "info"].contains(&severity), "{rule}");
            }
        }
    }
}

/// The container's securityContext capabilities the DaemonSet adds.
pub(crate) fn manifest_capabilities(ds: &Value) -> Vec<String> {
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn daemonset_runs_the_agent_as_the_contract_says() {
    let test = "daemonset_runs_the_agent_as_the_contract_says";
    let Some(python) = python(test) else { return };
    let ds = yaml_doc(&python, &kube("daemonset.yaml"));
    let text = fs::read_to_string(kube("daemonset.yaml")).unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    // Every node: a toleration for every taint.
    assert!(pod["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["operator"] == "Exists" && t.get("key").is_none() && t.get("effect").is_none()));
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "run");
    assert!(args.windows(2).any(|w| w == ["--netns", "all"]), "{args:?}");
    assert!(
        args.windows(2)
            .any(|w| w == ["--config", "/etc/dhcpfix/dhcpfix.toml"]),
        "{args:?}"
    );
    // The interface patterns live in dhcpfix.toml only.
    assert!(!args.contains(&"--iface"), "{args:?}");
    assert!(
        args.windows(2)
            .any(|w| w == ["--metrics-addr", "$(HOST_IP):9788"]),
        "{args:?}"
    );
    let env = c["env"].as_array().unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "HOST_IP" && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"));

    // Security: not privileged, read-only root, all capabilities dropped but
    // the measured few, each explained in the manifest.
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let caps = manifest_capabilities(&ds);
    assert_eq!(caps, ["NET_ADMIN", "NET_BROADCAST", "SYS_ADMIN", "SYS_PTRACE"]);
    for cap in &caps {
        assert!(
            text.contains(&format!("# - {cap}: ")),
            "{cap} is not explained in daemonset.yaml"
        );
    }
    // The API server's own rules, which no schema states: no
    // allowPrivilegeEscalation: false with SYS_ADMIN, no Bidirectional
    // propagation without privileged.
    if caps.iter().any(|c| c == "SYS_ADMIN") {
        assert_ne!(sc["allowPrivilegeEscalation"], false);
    }

    // Mounts: host bpffs and /run/netns with HostToContainer, config read-only.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let volumes = pod["volumes"].as_array().unwrap();
    let mount = |path: &str| {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no mount at {path}"));
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
        (m.clone(), v.clone())
    };
    let (m, v) = mount("/sys/fs/bpf");
    assert_eq!(m["mountPropagation"], "HostToContainer");
    assert_eq!(v["hostPath"]["path"], "/sys/fs/bpf");
    assert_ne!(m["readOnly"], true);
    let (m, v) = mount("/run/netns");
    assert_eq!(m["mountPropagation"], "HostToContainer");
    assert_eq!(m["readOnly"], true);
    assert_eq!(v["hostPath"]["path"], "/run/netns");
    let (m, v) = mount("/etc/dhcpfix");
    assert_eq!(m["readOnly"], true);
    assert_eq!(v["configMap"]["name"], "dhcpfix-config");
    for m in mounts {
        assert_ne!(m["mountPropagation"], "Bidirectional", "needs privileged: true");
    }

    // The metrics port, and the probes on it.
    let ports = c["ports"].as_array().unwrap();
    assert!(ports
        .iter()
        .any(|p| p["name"] == "metrics" && p["containerPort"] == 9788 && p["protocol"] == "TCP"));
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }

    // Resources: requests and limits, with headroom over the measured
    // 21 MiB RSS (BENCHMARKS.md).
    let mib = |q: &Value| -> u64 {
        let q = q.as_str().unwrap();
        q.strip_suffix("Mi")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{q}"))
    };
    let res = &c["resources"];
    assert!(mib(&res["requests"]["memory"]) >= 2 * 21);
    assert!(mib(&res["limits"]["memory"]) >= 4 * 21);
    assert!(res["requests"]["cpu"].is_string() && res["limits"]["cpu"].is_string());

    // The config the ConfigMap carries is one today's agent reads.
    let config = dhcpfix::agent::config::FileConfig::load(&kube("dhcpfix.toml")).unwrap();
    assert!(config.interfaces.is_some_and(|i| !i.is_empty()));
}

#[test]
fn service_and_servicemonitor_reach_the_metrics_port() {
    let test = "service_and_servicemonitor_reach_the_metrics_port";
    let Some(python) = python(test) else { return };
    let ds = yaml_doc(&python, &kube("daemonset.yaml"));
    let svc = yaml_doc(&python, &kube("service.yaml"));
    let sm = yaml_doc(&python, &kube("servicemonitor.yaml"));
    let pod_labels = ds["spec"]["template"]["metadata"]["labels"].as_object().unwrap();
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "Service selector {k}");
    }
    assert_eq!(svc["spec"]["clusterIP"], "None");
    let port = &svc["spec"]["ports"][0];
    assert_eq!(
        (port["name"].as_str(), port["port"].as_u64()),
        (Some("metrics"), Some(9788))
    );
    assert_eq!(port["targetPort"], "metrics");
    let svc_labels = svc["metadata"]["labels"].as_object().unwrap();
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(svc_labels.get(k), Some(v), "ServiceMonitor selector {k}");
    }
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    // The job is the Service's name, which the alerts expect.
    assert_eq!(svc["metadata"]["name"], "dhcpfix");
    assert!(sm["spec"].get("jobLabel").is_none());
    let rules = fs::read_to_string(root().join(rules::RULES)).unwrap();
    assert!(rules.contains("job=\"dhcpfix\""));
    // The guest's pod label survives: the target's own pod label is dropped.
    assert!(endpoint["relabelings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == "labeldrop"
            && r["regex"]
                .as_str()
                .is_some_and(|x| x.split('|').any(|p| p == "pod"))));
}

// ---------------------------------------------------------------- Debian

/// Files and directories (not followed through symlinks) under `roots`.
fn file_list(roots: &[&str]) -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            out.insert(path.clone());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    for r in roots {
        walk(Path::new(r), &mut out);
    }
    out
}

/// Everything under /etc, /usr (which /lib is, merged) and the state of
/// dpkg and systemd with "dhcpfix" in its path: whatever the package, its
/// scripts or dpkg could leave of it. Not all of /etc and /usr, not
/// /var/lib/containers (this file's podman tests), and not other tests' files
/// ("dhcpfix-test-*"): on a shared development machine, other work installs
/// packages and runs libvirt guests meanwhile.
fn dhcpfix_paths() -> BTreeSet<PathBuf> {
    file_list(&[
        "/etc",
        "/usr",
        "/var/lib/dpkg",
        "/var/lib/systemd",
        "/var/lib/dhcpfix",
    ])
    .into_iter()
    .filter(|p| {
        let p = p.to_string_lossy();
        p.contains("dhcpfix") && !p.contains("dhcpfix-test")
    })
    .collect()
}

fn dpkg_status(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn dpkg_installed(package: &str) -> bool {
    dpkg_status(package).contains("install ok installed")
}

/// A file moved out of the way, and put back on drop.
struct SetAside {
    path: PathBuf,
    aside: PathBuf,
}

impl SetAside {
    fn new(path: &Path) -> Self {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let aside = path.with_file_name(format!(".{name}.dhcpfix-deploy-test"));
        fs::rename(path, &aside).unwrap();
        Self {
            path: path.to_path_buf(),
            aside,
        }
    }
}

impl Drop for SetAside {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        let _ = fs::rename(&self.aside, &self.path);
    }
}

/// Purges the package if the test stops half-way.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        if !dpkg_status("dhcpfix").is_empty() {
            let _ = Command::new("dpkg").args(["--purge", "dhcpfix"]).output();
        }
    }
}

/// Runs the libvirt hook as libvirt does; it must exit 0 and print nothing.
fn run_hook(hook: &Path) -> String {
    let mut child = Command::new(hook)
        .args(["guest0", "prepare", "begin", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"<domain type='kvm'><name>guest0</name></domain>")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "the hook printed on stdout: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn debian_package_installs_removes_and_purges_cleanly() {
    let test = "debian_package_installs_removes_and_purges_cleanly";
    if !dhcpfix_lab::kit::privileged(test) {
        return;
    }
    let Some(deb) = from_env(test, "DHCPFIX_TEST_DEB") else {
        return;
    };
    let hook = Path::new("/etc/libvirt/hooks/qemu.d/dhcpfix");
    // The libvirt tests install their own hook at that path meanwhile (in
    // this process too: one test binary): one at a time.
    let _libvirt = crate::libvirt_real::harness::take_lock().unwrap_or_else(|e| panic!("{e}"));
    let status = dpkg_status("dhcpfix");
    if !status.is_empty() && !status.contains("not-installed") {
        if !ci() {
            skip(
                test,
                &format!("dhcpfix's package is on this machine ({status}); not touching it"),
            );
            return;
        }
        run_ok(Command::new("dpkg").args(["--purge", "dhcpfix"]));
    }
    // Someone's own hook at the package's path (contrib/, by hand, or a
    // libvirt test run that died): the package would take it over as a
    // modified conffile, and purge it. Under CI nothing else runs: set it
    // aside meanwhile. Elsewhere someone may be using it: leave it alone.
    let _hook_aside = if hook.exists() {
        if !ci() {
            skip(
                test,
                &format!("{} exists and is no package's; not touching it", hook.display()),
            );
            return;
        }
        Some(SetAside::new(hook))
    } else {
        None
    };
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.ends_with(&format!("debian/dhcpfix_{version}_amd64.deb")),
        "{deb}"
    );
    let before = dhcpfix_paths();
    // The directories the package holds, which existed before it.
    let contents = run_ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let before_dirs: BTreeSet<PathBuf> = contents
        .lines()
        .filter(|l| l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| PathBuf::from(p.trim_start_matches('.').trim_end_matches('/')))
        .filter(|p| p.is_dir())
        .collect();
    let _purge = PurgeOnDrop;

    run_ok(Command::new("dpkg").arg("-i").arg(&deb));
    let listed = run_ok(Command::new("dpkg").args(["-L", "dhcpfix"]));
    // Directories the package made, which purge must take away again.
    let made_dirs: Vec<PathBuf> = listed
        .lines()
        .filter(|l| *l != "/.")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .collect();

    // The binary runs (static: any Debian or Ubuntu).
    let out = run_ok(Command::new("/usr/sbin/dhcpfix").arg("--version"));
    assert_eq!(out.trim(), format!("dhcpfix {version}"));
    let mode = fs::metadata("/usr/sbin/dhcpfix").unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);

    // The units, with the package's paths and the contrib unit's
    // privileges unchanged.
    let unit = fs::read_to_string("/lib/systemd/system/dhcpfix.service").unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/sbin/dhcpfix run --config /etc/dhcpfix/dhcpfix.toml\n"),
        "{unit}"
    );
    let contrib_unit = fs::read_to_string(root().join("contrib/systemd/dhcpfix.service")).unwrap();
    for line in contrib_unit
        .lines()
        .filter(|l| l.starts_with("CapabilityBoundingSet="))
    {
        assert!(unit.contains(line), "{line}");
    }
    let attach_unit = fs::read_to_string("/lib/systemd/system/dhcpfix-attach@.service").unwrap();
    assert!(
        attach_unit.contains("ExecStart=/usr/sbin/dhcpfix attach -- %i"),
        "{attach_unit}"
    );
    for text in [&unit, &attach_unit] {
        assert!(!text.contains("/usr/local"), "{text}");
    }
    // Nothing enabled, nothing started.
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/dhcpfix.service").exists());

    // The config is a conffile, as contrib has it; so is the libvirt hook.
    assert_eq!(
        fs::read_to_string("/etc/dhcpfix/dhcpfix.toml").unwrap(),
        fs::read_to_string(root().join("contrib/systemd/dhcpfix.toml")).unwrap()
    );
    let conffiles = run_ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "dhcpfix"]));
    for f in ["/etc/dhcpfix/dhcpfix.toml", "/etc/libvirt/hooks/qemu.d/dhcpfix"] {
        assert!(conffiles.contains(f), "{f} is not a conffile: {conffiles}");
    }
    assert_eq!(fs::metadata(hook).unwrap().permissions().mode() & 0o777, 0o755);
    let hook_text = fs::read_to_string(hook).unwrap();
    assert!(
        hook_text.contains("${DHCPFIX_BIN:-/usr/sbin/dhcpfix}"),
        "{hook_text}"
    );
    let stderr = run_hook(hook);
    assert!(!stderr.contains("not found"), "{stderr}");

    // The udev rule is installed but not active.
    assert!(Path::new("/usr/share/dhcpfix/udev/90-dhcpfix.rules").is_file());
    for active in [
        "/lib/udev/rules.d/90-dhcpfix.rules",
        "/etc/udev/rules.d/90-dhcpfix.rules",
    ] {
        assert!(!Path::new(active).exists(), "{active}");
    }

    // Man pages (gzip) and completions.
    for page in ["dhcpfix", "dhcpfix-run", "dhcpfix-attach", "dhcpfix-doctor"] {
        let path = format!("/usr/share/man/man1/{page}.1.gz");
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(bytes[..2], [0x1f, 0x8b], "{path} is not gzip");
    }
    assert!(
        !listed.contains("dhcpfix-generate"),
        "hidden command got a man page"
    );
    for f in [
        "/usr/share/bash-completion/completions/dhcpfix",
        "/usr/share/zsh/vendor-completions/_dhcpfix",
        "/usr/share/fish/vendor_completions.d/dhcpfix.fish",
    ] {
        let text = fs::read_to_string(f).unwrap();
        assert!(text.contains("attach") && !text.contains("generate"), "{f}");
    }
    run_ok(Command::new("bash").args(["-n", "/usr/share/bash-completion/completions/dhcpfix"]));
    assert!(Path::new("/usr/share/doc/dhcpfix/README.Debian").is_file());

    // Reinstalling keeps an edited conffile.
    let edited = "# edited\ninterfaces = [\"vnet*\", \"tap*\"]\n";
    fs::write("/etc/dhcpfix/dhcpfix.toml", edited).unwrap();
    run_ok(Command::new("dpkg").args(["-i", "--force-confold"]).arg(&deb));
    assert_eq!(fs::read_to_string("/etc/dhcpfix/dhcpfix.toml").unwrap(), edited);

    // Remove: the binary goes, the conffiles stay, and the hook left behind
    // still exits 0 quietly, leaving guests alone.
    run_ok(Command::new("dpkg").args(["-r", "dhcpfix"]));
    assert!(!Path::new("/usr/sbin/dhcpfix").exists());
    assert!(Path::new("/etc/dhcpfix/dhcpfix.toml").exists());
    let stderr = run_hook(hook);
    assert!(stderr.contains("not found; guest left alone"), "{stderr}");

    // Purge: everything goes but what the administrator put there.
    fs::write("/etc/dhcpfix/admin-notes", "mine\n").unwrap();
    run_ok(Command::new("dpkg").args(["--purge", "dhcpfix"]));
    assert!(!dpkg_installed("dhcpfix"));
    assert!(!Path::new("/etc/dhcpfix/dhcpfix.toml").exists());
    assert!(!hook.exists());
    assert_eq!(fs::read_to_string("/etc/dhcpfix/admin-notes").unwrap(), "mine\n");
    fs::remove_file("/etc/dhcpfix/admin-notes").unwrap();
    fs::remove_dir("/etc/dhcpfix").unwrap();

    let after = dhcpfix_paths();
    let left: Vec<_> = after.difference(&before).collect();
    let lost: Vec<_> = before.difference(&after).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(lost.is_empty(), "removed what was there before: {lost:?}");
    for dir in made_dirs {
        assert!(
            dir.exists() == before_dirs.contains(&dir),
            "{}: {} before, {} after the purge",
            dir.display(),
            if before_dirs.contains(&dir) {
                "there"
            } else {
                "not there"
            },
            if dir.exists() { "there" } else { "not there" }
        );
    }
}

// ---------------------------------------------------------------- image

pub(crate) fn image(test: &str) -> Option<String> {
    if !dhcpfix_lab::kit::privileged(test) || !need_tool(test, "podman") {
        return None;
    }
    let image = from_env(test, "DHCPFIX_TEST_IMAGE")?;
    let exists = Command::new("podman")
        .args(["image", "exists", &image])
        .status()
        .is_ok_and(|s| s.success());
    assert!(exists, "{image} is not built (cargo xtask image)");
    Some(image)
}

#[test]
fn image_holds_the_static_binary_and_nothing_else() {
    let test = "image_holds_the_static_binary_and_nothing_else";
    let Some(image) = image(test) else { return };
    let version = env!("CARGO_PKG_VERSION");
    let inspect = |img: &str| -> Value {
        let out = run_ok(Command::new("podman").args(["image", "inspect", img]));
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    };
    let info = inspect(&image);
    assert_eq!(info["Id"], inspect(&format!("localhost/dhcpfix:{version}"))["Id"]);
    assert_eq!(info["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    let size = info["Size"].as_u64().unwrap();
    eprintln!("image size: {size} bytes");
    assert!(size < 10_000_000, "{size} bytes");
    assert_eq!(
        info["Config"]["Entrypoint"],
        serde_json::json!(["/usr/sbin/dhcpfix"])
    );
    assert_eq!(
        info["Config"]["Labels"]["org.opencontainers.image.version"],
        version
    );
    assert!(info["Config"]["User"].as_str().unwrap_or_default().is_empty());

    // Its file system: the binary, nothing else.
    let id = run_ok(Command::new("podman").args(["create", "--pull=never", &image]));
    let id = id.trim();
    let tar = Command::new("podman").args(["export", id]).output().unwrap();
    run_ok(Command::new("podman").args(["rm", id]));
    let mut lister = Command::new("tar")
        .arg("-t")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    lister.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let list = lister.wait_with_output().unwrap();
    let files: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(str::to_owned)
        .collect();
    assert_eq!(files, ["usr/sbin/dhcpfix"]);

    let out = run_ok(
        podman()
            .args(["run", "--rm", "--pull=never"])
            .args(ULIMITS)
            .args([&image, "--version"]),
    );
    // It ran with nothing beside it in the image: static, no libc.
    assert_eq!(out.trim(), format!("dhcpfix {version}"));
}

/// Whether the image's agent is the one the DaemonSet is written for
/// (`--netns`, `/healthz`, `/readyz`, the `netns` and `pod` labels).
fn contract_agent(image: &str) -> bool {
    let out = run_ok(
        podman()
            .args(["run", "--rm", "--pull=never"])
            .args(ULIMITS)
            .args([image, "run", "--help"]),
    );
    let has = out.contains("--netns");
    if !has {
        eprintln!(
            "note: this agent has no --netns: running it without --netns all, and \
             skipping the /healthz, /readyz and other-namespace assertions"
        );
    }
    has
}

/// A free TCP port on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:port: (status, body), or None if nothing answers.
/// Reads Content-Length bytes of body rather than waiting for the close.
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = s.read(&mut chunk).ok()?;
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if n == 0 || length.is_some_and(|len| body.len() >= len) {
                let status = head.split_whitespace().nth(1)?.parse().ok()?;
                return Some((status, body.to_owned()));
            }
        } else if n == 0 {
            return None;
        }
    }
}

pub(crate) fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    dhcpfix_lab::kit::poll(timeout, Duration::from_millis(100), &mut done).is_some()
}

/// Interfaces, namespaces, the container and the pins a container test
/// made; all removed on drop, whatever happened.
struct Scene {
    container: String,
    host_if: String,
    netns: String,
    sleeper: Option<Child>,
    work: WorkDir,
}

impl Scene {
    /// Whether a link of `iface` (in the host's namespace) is pinned on the
    /// test's bpffs: a file named after it, or after its ifindex, in a
    /// `links` directory anywhere below the pin directory (the pin layout
    /// differs between versions: links/NAME, abi-2/links/NETNS/IFINDEX).
    fn pinned(&self, iface: &str) -> bool {
        let ifindex = fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        file_list(&[&self.work.0.join("bpffs/dhcpfix").to_string_lossy()])
            .iter()
            .filter(|p| p.components().any(|c| c.as_os_str() == "links"))
            .filter(|p| p.is_file() || !p.is_dir())
            .any(|p| {
                p.file_name()
                    .is_some_and(|n| n == iface || (!ifindex.is_empty() && n == ifindex.as_str()))
            })
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.container])
            .output();
        if let Some(mut s) = self.sleeper.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let pins = self.work.0.join("bpffs/dhcpfix");
        if pins.exists() {
            let _ = Command::new(crate::support::BIN)
                .arg("--pin-dir")
                .arg(&pins)
                .args(["clean", "--all"])
                .output();
        }
    }
}

/// `podman run` with the DaemonSet's settings: `caps` added to none, host
/// PID and network, read-only root, the default seccomp profile (as
/// RuntimeDefault), the host's /run/netns, the test's bpffs at
/// /sys/fs/bpf, deploy/kubernetes/dhcpfix.toml at /etc/dhcpfix, and the
/// DaemonSet's arguments with the metrics on 127.0.0.1:`port` and the
/// test's interface pattern (flags win over the file).
fn daemonset_run(scene: &Scene, image: &str, caps: &[String], args: &[String], detach: bool) -> Command {
    daemonset_command(&scene.container, &scene.work.0, image, caps, args, detach)
}

/// [`daemonset_run`] for container `name`, with `work`'s `bpffs` and
/// `config` directories.
pub(crate) fn daemonset_command(
    name: &str,
    work: &Path,
    image: &str,
    caps: &[String],
    args: &[String],
    detach: bool,
) -> Command {
    let mut c = podman();
    c.args(["run", "--pull=never", "--name", name]);
    if detach {
        c.arg("-d");
    } else {
        c.arg("--rm");
    }
    c.args(["--pid=host", "--network=host", "--read-only", "--cap-drop=all"]);
    if !caps.is_empty() {
        let list: Vec<String> = caps.iter().map(|c| format!("CAP_{c}")).collect();
        c.arg(format!("--cap-add={}", list.join(",")));
    }
    c.arg("-v")
        .arg(format!("{}:/sys/fs/bpf:rslave", work.join("bpffs").display()))
        .args(["-v", "/run/netns:/run/netns:ro,rslave"])
        .arg("-v")
        .arg(format!("{}:/etc/dhcpfix:ro", work.join("config").display()))
        .args(["-e", "RUST_LOG=info"])
        .args(ULIMITS)
        .arg(image)
        .args(args);
    c
}

/// The DaemonSet's container arguments, with the metrics on
/// 127.0.0.1:`port`.
pub(crate) fn daemonset_args(ds: &Value, port: u16) -> Vec<String> {
    ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("the DaemonSet's container has args")
        .iter()
        .map(|a| {
            a.as_str()
                .expect("args are strings")
                .replace("$(HOST_IP):9788", &format!("127.0.0.1:{port}"))
        })
        .collect()
}

/// What container `name` logged (the agent logs to stderr).
pub(crate) fn container_log(name: &str) -> String {
    String::from_utf8_lossy(&run(Command::new("podman").args(["logs", name])).stderr).into_owned()
}

/// `podman stop`: the agent gets SIGTERM, exits 0 and says its
/// attachments stay in place.
pub(crate) fn stop_leaving_attachments(name: &str) {
    run_ok(Command::new("podman").args(["stop", "-t", "10", name]));
    let code = run_ok(Command::new("podman").args(["inspect", "--format", "{{.State.ExitCode}}", name]));
    let log = container_log(name);
    assert_eq!(code.trim(), "0", "{name} exited {code}:\n{log}");
    assert!(log.contains("stay in place"), "{log}");
}

#[test]
fn container_runs_with_the_daemonset_settings_and_stops_cleanly() {
    let test = "container_runs_with_the_daemonset_settings_and_stops_cleanly";
    let Some(image) = image(test) else { return };
    let Some(python) = python(test) else { return };
    let ds = yaml_doc(&python, &kube("daemonset.yaml"));
    let caps = manifest_capabilities(&ds);
    let contract = contract_agent(&image);

    let tag = format!("dfxd{}", std::process::id() % 100_000);
    let work = WorkDir::new("podman");
    crate::support::mount_bpffs(&work.0.join("bpffs"));
    fs::create_dir(work.0.join("config")).unwrap();
    fs::copy(kube("dhcpfix.toml"), work.0.join("config/dhcpfix.toml")).unwrap();
    fs::create_dir_all("/run/netns").unwrap();
    let mut scene = Scene {
        container: format!("{tag}-agent"),
        host_if: format!("{tag}h"),
        netns: format!("{tag}-ns"),
        sleeper: None,
        work,
    };
    // One end in the host namespace, the other in a named one (as CRI pins
    // pods' under /run/netns), and, for the new agent, an interface in a
    // namespace only a process holds.
    run_ok(Command::new("ip").args(["netns", "add", &scene.netns]));
    run_ok(Command::new("ip").args([
        "link",
        "add",
        &scene.host_if,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{tag}n"),
        "netns",
        &scene.netns,
    ]));
    if contract {
        let sleeper = Command::new("unshare")
            .args(["--net", "sh", "-c"])
            // (No dummy devices on every kernel: a veth pair, the peer's
            // name outside the pattern.)
            .arg(format!(
                "ip link add {tag}p type veth peer name q{tag} && exec sleep 120"
            ))
            .spawn()
            .unwrap();
        scene.sleeper = Some(sleeper);
    }

    // The DaemonSet's arguments, for this test.
    let port = free_port();
    let mut args = daemonset_args(&ds, port);
    if !contract {
        if let Some(i) = args.iter().position(|a| a == "--netns") {
            args.drain(i..i + 2);
        }
    }
    args.extend(["--iface".to_owned(), format!("{tag}*")]);
    let expected = if contract { 3 } else { 1 };

    // The manifest's capabilities: it attaches and serves metrics.
    run_ok(&mut daemonset_run(&scene, &image, &caps, &args, true));
    let attached = format!("dhcpfix_attached_interfaces {expected}\n");
    let mut page = String::new();
    let ok = wait_for(Duration::from_secs(20), || {
        page = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        page.contains(&attached)
    });
    let logs = run(Command::new("podman").args(["logs", &scene.container]));
    assert!(ok, "no {attached:?} in /metrics:\n{page}\n{logs:?}");
    let series = format!("dhcpfix_packets_seen_total{{interface=\"{}\"", scene.host_if);
    assert!(page.contains(&series), "{page}");
    assert!(scene.pinned(&scene.host_if));
    if contract {
        assert_eq!(
            http_get(port, "/healthz").map(|(s, b)| (s, b.trim().to_owned())),
            Some((200, "ok".into()))
        );
        assert_eq!(http_get(port, "/readyz").map(|(s, _)| s), Some(200));
        assert!(page.contains(&format!("netns=\"{}\"", scene.netns)), "{page}");
        assert!(page.contains(&format!("interface=\"{tag}p\"")), "{page}");
    } else {
        eprintln!("skipped (today's agent): /healthz, /readyz, interfaces in other namespaces");
    }

    // `podman stop`: SIGTERM, exit 0, attachments left in place.
    stop_leaving_attachments(&scene.container);
    assert!(scene.pinned(&scene.host_if));
    run_ok(Command::new("podman").args(["rm", &scene.container]));
    run_ok(
        Command::new(crate::support::BIN)
            .arg("--pin-dir")
            .arg(scene.work.0.join("bpffs/dhcpfix"))
            .args(["clean", "--all"]),
    );

    // Each capability is needed: one fewer, and it refuses to start, naming
    // what is missing (the kernel's reasons: the test below). An older
    // agent, without --netns, needs neither NET_BROADCAST nor SYS_PTRACE.
    for missing in &caps {
        if !contract && ["NET_BROADCAST", "SYS_PTRACE"].contains(&missing.as_str()) {
            eprintln!("skipped (agent without --netns): {missing} is only needed by --netns");
            continue;
        }
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        // Refused at start: it must not be running a minute later.
        let out = run_within(
            &mut daemonset_run(&scene, &image, &fewer, &args, false),
            Duration::from_secs(60),
        );
        assert!(!out.status.success(), "ran without {missing}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("missing capability"), "without {missing}: {err}");
        if contract {
            assert!(
                err.contains(&format!("CAP_{missing}")),
                "without {missing}: {err}"
            );
        }
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!scene.pinned(&scene.host_if));
    }
}

// ---------------------------------------------------------------- kernel facts

/// `setpriv` keeping only `caps` (lower case, without cap_) as root's
/// bounding set, as a container with those capabilities added has.
fn with_caps(caps: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    let set: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    c.arg("--bounding-set")
        .arg(format!("-all,{}", set.join(",")))
        .args(["--inh-caps", "-all", "--"]);
    c
}

/// Why the every-namespace agent needs SYS_ADMIN, NET_ADMIN, NET_BROADCAST
/// and SYS_PTRACE, measured with nsenter, ip and python (the operations,
/// without the agent): setns(2) into another network namespace needs
/// CAP_SYS_ADMIN; giving it an id (RTM_NEWNSID) needs CAP_NET_ADMIN;
/// NETLINK_LISTEN_ALL_NSID needs CAP_NET_BROADCAST; opening /proc/PID/ns/net
/// of a process of another user, or of one with capabilities the caller
/// lacks, needs CAP_SYS_PTRACE (ptrace access mode read).
#[test]
fn covering_other_network_namespaces_needs_sys_admin_net_admin_net_broadcast_and_sys_ptrace() {
    let test = "covering_other_network_namespaces_needs_sys_admin_net_admin_net_broadcast_and_sys_ptrace";
    if !dhcpfix_lab::kit::privileged(test) || !need_tool(test, "setpriv") || !need_tool(test, "nsenter") {
        return;
    }
    let netns = format!("dfxc{}-ns", std::process::id() % 100_000);
    run_ok(Command::new("ip").args(["netns", "add", &netns]));
    struct Cleanup(String, Vec<Child>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for c in &mut self.1 {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let mut cleanup = Cleanup(netns.clone(), Vec::new());
    let pinned = format!("--net=/run/netns/{netns}");
    let enter = |caps: &[&str], target: &str| run(with_caps(caps).args(["nsenter", target, "true"]));

    // A pinned namespace (/run/netns/cni-*): setns needs SYS_ADMIN.
    let out = enter(&["net_admin", "bpf", "perfmon", "sys_ptrace"], &pinned);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{out:?}"
    );
    assert!(enter(&["net_admin", "sys_admin"], &pinned).status.success());

    // An id for that namespace in ours (RTM_NEWNSID, `ip netns set`): the
    // agent's link events name namespaces by it. NET_ADMIN; SYS_ADMIN does
    // not stand in for it. (Another agent on this machine may have given it
    // one already: "File exists" is permitted too.)
    let set_id = |caps: &[&str]| run(with_caps(caps).args(["ip", "netns", "set", &netns, "auto"]));
    let out = set_id(&["sys_admin", "net_broadcast", "sys_ptrace", "bpf", "perfmon"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{out:?}"
    );
    let out = set_id(&["net_admin"]);
    assert!(
        out.status.success() || String::from_utf8_lossy(&out.stderr).contains("File exists"),
        "{out:?}"
    );

    // One netlink socket hearing every namespace's link events
    // (NETLINK_LISTEN_ALL_NSID = 8 at SOL_NETLINK = 270) needs
    // NET_BROADCAST; SYS_ADMIN does not stand in for it.
    let listen_all = |caps: &[&str]| {
        run(with_caps(caps).args([
            "python3",
            "-c",
            "import socket\n\
             s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)\n\
             s.setsockopt(270, 8, 1)",
        ]))
    };
    let out = listen_all(&["net_admin", "sys_admin", "sys_ptrace"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionError"),
        "{out:?}"
    );
    assert!(listen_all(&["net_admin", "net_broadcast"]).status.success());

    // Namespaces held by processes: one of root with every capability, one
    // of another user (as virt-launcher's qemu runs).
    let root_sleeper = Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .unwrap();
    let user_sleeper = Command::new("unshare")
        .args([
            "--net",
            "setpriv",
            "--reuid=107",
            "--regid=107",
            "--clear-groups",
            "sleep",
            "60",
        ])
        .spawn()
        .unwrap();
    let pids = [root_sleeper.id(), user_sleeper.id()];
    cleanup.1.extend([root_sleeper, user_sleeper]);
    for pid in pids {
        // unshare(1) execs sleep (setpriv execs it in turn): wait until the
        // process is in its own namespace and is sleep.
        let ns = format!("/proc/{pid}/ns/net");
        assert!(wait_for(Duration::from_secs(5), || {
            fs::read_link(&ns).ok() != fs::read_link("/proc/self/ns/net").ok()
                && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        }));
        let target = format!("--net={ns}");
        let out = enter(&["net_admin", "sys_admin"], &target);
        assert!(!out.status.success(), "opened {ns} without SYS_PTRACE");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{out:?}"
        );
        assert!(enter(&["net_admin", "sys_admin", "sys_ptrace"], &target)
            .status
            .success());
    }
}

#[test]
fn maintainer_scripts_pass_shellcheck_and_enable_nothing() {
    let scripts = ["postinst", "prerm", "postrm"].map(|s| root().join("deploy/debian").join(s));
    for s in &scripts {
        let mode = fs::metadata(s).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{} is not executable", s.display());
        let text = fs::read_to_string(s).unwrap();
        assert!(
            text.starts_with("#!/bin/sh\n") && text.contains("\nset -e\n"),
            "{}",
            s.display()
        );
        // The package enables and starts nothing (README.Debian says why).
        for word in [
            "systemctl enable",
            "systemctl start",
            "deb-systemd-helper enable",
            "udevadm",
        ] {
            let mut code = text.lines().filter(|l| !l.trim_start().starts_with('#'));
            assert!(!code.any(|l| l.contains(word)), "{}: {word}", s.display());
        }
    }
    if !need_tool(
        "maintainer_scripts_pass_shellcheck_and_enable_nothing",
        "shellcheck",
    ) {
        return;
    }
    run_ok(
        Command::new("shellcheck")
            .args(["--shell=sh", "--severity=style"])
            .args(&scripts),
    );
}
