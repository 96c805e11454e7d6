//! The DaemonSet's container on a KubeVirt node in a box: the image run
//! with podman exactly as deploy/kubernetes/daemonset.yaml runs it (its
//! capabilities and nothing more, host PID and network, read-only root,
//! its mounts, its arguments and ConfigMap), against the KubeVirt-shaped
//! lab of [`crate::kubevirt`] (one pod pinned as `cni-<uuid>`, one held
//! only by a process).
//!
//! - Guests get leases; `/healthz`, `/readyz` and `/metrics` answer; each
//!   pod's filled series equals the replies its guest got.
//! - `podman stop` (a DaemonSet pod deleted, or a node drained): the agent
//!   exits 0 and the guests stay covered; leases still come.
//! - A newer image takes over as a rolling update does: a build with a
//!   different pin ABI (the `next-abi` feature, as the upgrade tests use)
//!   in an image of its own starts after the old container stopped, moves
//!   every link to its program in place, and the counters continue. A
//!   watcher reads both hooks of both taps every few milliseconds
//!   throughout: no read may find a tap without exactly one program.
//!
//! Cost: about 40 s (three rounds of dhclient in two pods, two agents).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use aya::programs::tc::TcAttachType;
use dhcpfix_lab::{
    kit::gate,
    lab::{Lab, PodNetns, POD_TAP},
};

use crate::{
    deploy::{
        container_log, daemonset_args, daemonset_command, free_port, http_get, image, kube,
        manifest_capabilities, python, run_ok, stop_leaving_attachments, wait_for, yaml_doc, WorkDir,
    },
    kubevirt::{dhclient_in, dhcp_since, pod},
    support::{leased, next_abi_bin, samples, BIN},
    upgrade::{prog_id, tcx_ids},
};

const LEASE_TIMEOUT: Duration = Duration::from_secs(8);

/// A container, and the image built for the test, removed on drop.
struct Containers {
    names: Vec<String>,
    images: Vec<String>,
}

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("podman")
                .args(["rm", "-f", "-t", "0", name])
                .output();
        }
        for image in &self.images {
            let _ = Command::new("podman").args(["rmi", "-f", image]).output();
        }
    }
}

/// An image `tag` holding `bin` (a dynamically linked build) and the
/// libraries `ldd` says it needs, at /usr/sbin/dhcpfix as in ours.
fn build_image_of(bin: &Path, tag: &str, work: &Path) {
    let context = work.join("next-image");
    let rootfs = context.join("rootfs");
    fs::create_dir_all(rootfs.join("usr/sbin")).unwrap();
    run_ok(
        Command::new("strip")
            .args(["--strip-all", "-o"])
            .arg(rootfs.join("usr/sbin/dhcpfix"))
            .arg(bin),
    );
    let ldd = run_ok(Command::new("ldd").arg(bin));
    for lib in ldd.lines().filter_map(|l| {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; not linux-vdso.
        let path = l.split("=>").last()?.split_whitespace().next()?;
        path.starts_with('/').then(|| PathBuf::from(path))
    }) {
        let dest = rootfs.join(lib.strip_prefix("/").unwrap());
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::copy(&lib, &dest).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    }
    fs::write(
        context.join("Containerfile"),
        "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/usr/sbin/dhcpfix\"]\n",
    )
    .unwrap();
    run_ok(
        Command::new("podman")
            .args(["build", "--quiet", "--pull=never", "--tag", tag])
            .arg(&context),
    );
}

/// The `dhcpfix_checksums_filled_total` of the pod's tap on `/metrics`.
fn filled_on_page(page: &str, netns: &str) -> Option<u64> {
    samples(page)
        .iter()
        .find(|s| {
            s.name == "dhcpfix_checksums_filled_total"
                && s.label("netns") == netns
                && s.label("interface") == POD_TAP
        })
        .map(|s| s.value as u64)
}

fn ready(port: u16) -> bool {
    http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
}

/// `podman stop`: the guests stay covered, and the agent logged no error.
fn stop(name: &str) {
    stop_leaving_attachments(name);
    let log = container_log(name);
    assert!(!log.contains(" ERROR "), "{name} logged errors:\n{log}");
}

/// Leases in both pods, every reply the guests got verifying.
fn leases_in(pods: &[&Lab]) {
    let before: Vec<usize> = pods.iter().map(|p| p.dhcp_frames().len()).collect();
    for ((p, out), from) in pods.iter().zip(dhclient_in(pods, LEASE_TIMEOUT)).zip(before) {
        assert!(leased(p, &out), "no lease in {}:\n{}", p.host_netns(), out.log);
        let (got, bad) = dhcp_since(p, from);
        assert!(
            got >= 1 && bad == 0,
            "{}: {got} replies, {bad} bad",
            p.host_netns()
        );
    }
}

#[test]
fn daemonset_image_covers_pods_through_a_stop_and_a_newer_image() {
    let test = "daemonset_image_covers_pods_through_a_stop_and_a_newer_image";
    let Some(image) = image(test) else { return };
    let Some(python) = python(test) else { return };
    // The agent sees every namespace of the host: no other lab may run.
    let _alone = gate::exclusive().unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    let newer_bin = next_abi_bin();
    let ds = yaml_doc(&python, &kube("daemonset.yaml"));
    let caps = manifest_capabilities(&ds);

    let work = WorkDir::new("daemonset-kubevirt");
    crate::support::mount_bpffs(&work.0.join("bpffs"));
    let pins = work.0.join("bpffs/dhcpfix");
    fs::create_dir(work.0.join("config")).unwrap();
    fs::copy(kube("dhcpfix.toml"), work.0.join("config/dhcpfix.toml")).unwrap();
    fs::create_dir_all("/run/netns").unwrap();

    let tag = format!("dfxk{}", std::process::id() % 100_000);
    let newer_image = format!("localhost/dhcpfix:test-next-abi-{tag}");
    let mut containers = Containers {
        names: vec![format!("{tag}-old"), format!("{tag}-new")],
        images: vec![],
    };
    let pinned = pod("vmi-alpine", PodNetns::Pinned);
    let held = pod("vmi-fedora", PodNetns::Process);
    let pods = [&pinned, &held];
    let frames_at_start: Vec<usize> = pods.iter().map(|p| p.dhcp_frames().len()).collect();

    // The DaemonSet's container: attaches in both pods, answers its probes.
    let port = free_port();
    let args = daemonset_args(&ds, port);
    run_ok(&mut daemonset_command(
        &containers.names[0],
        &work.0,
        &image,
        &caps,
        &args,
        true,
    ));
    let covered = |p: &Lab| crate::kubevirt::attached(p);
    assert!(
        wait_for(Duration::from_secs(20), || ready(port)
            && pods.iter().all(|p| covered(p))),
        "not ready with tap0 attached in both pods:\n{}",
        container_log(&containers.names[0])
    );
    assert_eq!(
        http_get(port, "/healthz").map(|(s, b)| (s, b.trim().to_owned())),
        Some((200, "ok".into()))
    );
    leases_in(&pods);
    let page = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
    let before_stop = filled_on_page(&page, pinned.host_netns())
        .unwrap_or_else(|| panic!("no filled series for {}:\n{page}", pinned.host_netns()));
    assert_eq!(
        before_stop,
        dhcp_since(&pinned, frames_at_start[0]).0,
        "filled = the replies the guest got"
    );

    // Stopped: guests stay covered.
    stop(&containers.names[0]);
    assert!(pods.iter().all(|p| covered(p)), "a tap lost its program at stop");
    leases_in(&pods);

    // A newer image with another pin ABI takes over; a watcher reads the
    // hooks of both taps all along.
    build_image_of(&newer_bin, &newer_image, &work.0);
    containers.images.push(newer_image.clone());
    let watching = AtomicBool::new(true);
    let (reads, uncovered) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let namespaces: Vec<PathBuf> = pods.iter().map(|p| p.host_netns_path()).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            while watching.load(Ordering::Relaxed) {
                for ns in &namespaces {
                    for hook in [TcAttachType::Egress, TcAttachType::Ingress] {
                        if tcx_ids(ns, POD_TAP, hook).len() != 1 {
                            uncovered.fetch_add(1, Ordering::Relaxed);
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        run_ok(&mut daemonset_command(
            &containers.names[1],
            &work.0,
            &newer_image,
            &caps,
            &args,
            true,
        ));
        let moved = wait_for(Duration::from_secs(30), || {
            ready(port) && !pins.join("abi-2").exists() && pins.join("abi-3/prog").exists()
        });
        // A few more reads after the move.
        std::thread::sleep(Duration::from_millis(200));
        watching.store(false, Ordering::Relaxed);
        assert!(
            moved,
            "the newer image did not take over:\n{}",
            container_log(&containers.names[1])
        );
    });
    let reads = reads.into_inner();
    assert!(reads > 20, "the watcher read the hooks only {reads} times");
    assert_eq!(
        uncovered.into_inner(),
        0,
        "reads of {reads} found a tap without exactly one program"
    );
    eprintln!("takeover: {reads} reads of the hooks, none uncovered");
    let (egress, ingress) = (
        prog_id(&pins.join("abi-3/prog")),
        prog_id(&pins.join("abi-3/prog-ingress")),
    );
    for ns in &namespaces {
        assert_eq!(tcx_ids(ns, POD_TAP, TcAttachType::Egress), [egress]);
        assert_eq!(tcx_ids(ns, POD_TAP, TcAttachType::Ingress), [ingress]);
    }
    assert!(container_log(&containers.names[1]).contains("moved "));

    // Counters continue: the newer agent's series counts every reply the
    // guest got since the first agent started, the stop included.
    leases_in(&pods);
    let page = http_get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
    let total = dhcp_since(&pinned, frames_at_start[0]).0;
    assert_eq!(
        filled_on_page(&page, pinned.host_netns()),
        Some(total),
        "filled after the takeover:\n{page}"
    );
    assert!(total > before_stop);
    stop(&containers.names[1]);

    // The newer build removes what it pinned.
    drop(containers);
    run_ok(
        Command::new(&newer_bin)
            .arg("--pin-dir")
            .arg(&pins)
            .args(["clean", "--all"]),
    );
    let _ = Command::new(BIN)
        .arg("--pin-dir")
        .arg(&pins)
        .args(["clean", "--all"])
        .output();
    eprintln!("daemonset on kubevirt pods: {:.1?}", started.elapsed());
}
