//! Idempotent set-up of the eBPF toolchain and the lab's packages.
//!
//! - Debian packages for the lab and tests (dnsmasq, dhclient, busybox...),
//!   and for the real-libvirt tests: libvirtd, QEMU (TCG), iPXE's ROMs.
//! - A Debian kernel for those tests' Linux guest: the package is downloaded
//!   (`apt-get download`) and only its kernel image and virtio-net modules
//!   are unpacked into `~/.cache/dhcpfix/guest-kernel/<package>`, so the
//!   host gets no second kernel, no initramfs-tools and no udev.
//! - The nightly toolchain's `rust-src` (aya-build compiles `core` for
//!   `bpfel-unknown-none` with `-Z build-std`).
//! - bpf-linker 0.13.0, built against the nightly's own libLLVM (same major
//!   version as the compiler, no system LLVM needed), cached in
//!   `~/.cache/dhcpfix/bpf-linker-<llvm>` (override: DHCPFIX_CACHE_DIR).
//! - cargo-fuzz (pinned), cached there too, for the fuzz targets' build in
//!   `cargo xtask test` and for `cargo xtask fuzz`.

use std::{
    collections::BTreeMap,
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::run_cmd;

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages and a command each provides (or, for a path starting
/// with `/`, a file), to check without dpkg.
const PACKAGES: &[(&str, &str)] = &[
    ("dnsmasq-base", "dnsmasq"),
    ("isc-dhcp-client", "dhclient"),
    ("busybox", "busybox"),
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("iptables", "iptables"),
    ("iperf3", "iperf3"),
    ("tcpdump", "tcpdump"),
    ("libcap2-bin", "capsh"),
    ("util-linux", "nsenter"),
    ("curl", "curl"),
    ("shellcheck", "shellcheck"),
    // tests/integration/security.rs: which programs dhcpfix executes (execve).
    ("strace", "strace"),
    // tests/libvirt_real.rs: a real libvirtd (+ virsh, the default network's
    // XML), QEMU for TCG guests, and the iPXE ROM QEMU loads for virtio-net.
    // The guest's initramfs reuses the lab's (dynamic) busybox above.
    ("libvirt-daemon-system", "libvirtd"),
    ("libvirt-daemon-system", "virsh"),
    ("libvirt-daemon-system", "/usr/share/libvirt/networks/default.xml"),
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("ipxe-qemu", "/usr/lib/ipxe/qemu/efi-virtio.rom"),
    // The bench: `bpftool prog run` on the attached program, next to its own figures.
    ("bpftool", "bpftool"),
    // libfuzzer-sys compiles libFuzzer (C++) for the fuzz targets.
    ("g++", "g++"),
];

/// The guest kernel for tests/libvirt_real.rs: Debian's cloud kernel (a
/// third of the generic one's size, virtio built as modules, 8250 serial
/// console built in). This metapackage names the current ABI's package.
const GUEST_KERNEL_META: &str = "linux-image-cloud-amd64";
/// What is unpacked from it (tar patterns): the kernel, its config, and the
/// module directories virtio_net and its dependencies live in.
const GUEST_KERNEL_PARTS: &[&str] = &[
    "./boot/vmlinuz-*",
    "./boot/config-*",
    "./lib/modules/*/modules.builtin",
    "./lib/modules/*/kernel/drivers/virtio/*",
    "./lib/modules/*/kernel/drivers/net/*",
    "./lib/modules/*/kernel/net/core/*",
];
/// apt-get waits this long for the dpkg lock (a shared machine may be
/// installing something else).
const APT_LOCK_TIMEOUT: &str = "DPkg::Lock::Timeout=600";
/// Debian packages for `cargo xtask image|deb` and the deploy tests: podman
/// (images, offline: `FROM scratch` needs no registry) and runc (crun
/// refuses this VM's cgroup layout), promtool (package prometheus: on a
/// machine that runs systemd its postinst also starts a Prometheus server,
/// which nothing here uses), strip (binutils).
const DEPLOY_PACKAGES: &[(&str, &str)] = &[
    ("podman", "podman"),
    ("runc", "runc"),
    ("prometheus", "promtool"),
    ("binutils", "strip"),
];

/// Environment for cargo and the tools: PATH with bpf-linker in front.
pub struct Env {
    path: String,
}

impl Env {
    pub fn vars(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([("PATH", self.path.clone())])
    }
}

/// Runs every set-up step; returns the environment to build with.
pub fn all() -> Result<Env> {
    packages()?;
    guest_kernel()?;
    rust_src()?;
    let linker_dir = bpf_linker()?;
    let path = format!(
        "{}:{}",
        linker_dir.display(),
        env::var("PATH").unwrap_or_default()
    );
    Ok(Env { path })
}

fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return Path::new(cmd).exists();
    }
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(cmd).is_file())
}

fn packages() -> Result<()> {
    install_packages(PACKAGES)
}

fn install_packages(packages: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    for (pkg, cmd) in packages {
        if !have(cmd) && !missing.contains(pkg) {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if euid() != 0 {
        bail!(
            "missing packages {}: run as root or apt-get install them",
            missing.join(" ")
        );
    }
    let started = std::time::Instant::now();
    apt_update()?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        // Set-up installs; it never removes a package to make room.
        .arg("--no-remove")
        .args(["-o", APT_LOCK_TIMEOUT])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    if missing.contains(&"qemu-system-x86") {
        if let Some(pin) = qemu_utils_pin()? {
            eprintln!(
                "note: the installed qemu-utils Breaks bookworm's qemu-system-common; \
                 installing {pin} with it so qemu-img stays"
            );
            install.arg("--allow-downgrades").arg(pin);
        }
    }
    run_cmd(&mut install)?;
    eprintln!(
        "installed {} in {:.0} s",
        missing.join(" "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn apt_update() -> Result<()> {
    run_cmd(Command::new("apt-get").args(["update", "-qq", "-o", APT_LOCK_TIMEOUT]))
}

/// Output of a query command (dpkg-query, apt-cache), if it succeeded.
fn query(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Some machines carry qemu-utils from bookworm-backports (>= 8.0), which
/// Breaks bookworm's qemu-system-common (< 8.0): apt would remove qemu-utils
/// to install qemu-system-x86. Returns `qemu-utils=V`, V being the version
/// of qemu-system-common apt is about to install, when the installed
/// qemu-utils is another version; `None` when nothing is in the way.
fn qemu_utils_pin() -> Result<Option<String>> {
    let Some(installed) = query(
        "dpkg-query",
        &["-W", "-f", "${db:Status-Status} ${Version}", "qemu-utils"],
    ) else {
        return Ok(None);
    };
    let Some(installed) = installed.strip_prefix("installed ").map(str::trim) else {
        return Ok(None);
    };
    let policy = query("apt-cache", &["policy", "qemu-system-common"]).unwrap_or_default();
    let candidate = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::trim)
        .filter(|v| *v != "(none)")
        .context("apt-cache policy qemu-system-common: no candidate version")?;
    if installed == candidate {
        return Ok(None);
    }
    let newer = Command::new("dpkg")
        .args(["--compare-versions", installed, "gt", candidate])
        .status()
        .context("running dpkg --compare-versions")?
        .success();
    Ok(newer.then(|| format!("qemu-utils={candidate}")))
}

/// Where the guest kernel goes; tests/support/libvirt_real.rs looks there.
fn guest_kernel_dir() -> PathBuf {
    cache_dir().join("guest-kernel")
}

/// Unpacks the guest kernel for tests/libvirt_real.rs unless the cache has
/// one (any `guest-kernel/*/READY`): a cached kernel is kept, so set-up
/// works offline once it has run.
fn guest_kernel() -> Result<()> {
    let root = guest_kernel_dir();
    let ready = fs::read_dir(&root)
        .map(|dir| dir.flatten().any(|e| e.path().join("READY").is_file()))
        .unwrap_or(false);
    if ready {
        return Ok(());
    }
    if euid() != 0 {
        // Only root runs the tests that boot it.
        eprintln!(
            "note: no guest kernel in {}: run set-up as root for tests/libvirt_real.rs",
            root.display()
        );
        return Ok(());
    }
    let started = std::time::Instant::now();
    let package = match guest_kernel_package() {
        Some(p) => p,
        None => {
            apt_update()?;
            guest_kernel_package()
                .with_context(|| format!("apt-cache depends {GUEST_KERNEL_META}: no linux-image package"))?
        }
    };
    let download = root.join(".download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    run_cmd(
        Command::new("apt-get")
            .args(["download", "-qq", "-o", "APT::Sandbox::User=root"])
            .arg(&package)
            .current_dir(&download),
    )?;
    let deb = fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let stem = deb
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| package.clone());
    let dest = root.join(&stem);
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir_all(&dest)?;
    unpack(&deb, &dest)?;
    fs::write(dest.join("READY"), format!("{package}\n"))?;
    fs::remove_dir_all(&download)?;
    eprintln!(
        "guest kernel {stem} unpacked into {} in {:.0} s",
        dest.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The versioned package the metapackage depends on, e.g.
/// `linux-image-6.1.0-57-cloud-amd64`.
fn guest_kernel_package() -> Option<String> {
    let out = query(
        "apt-cache",
        &["depends", "--no-recommends", "--no-suggests", GUEST_KERNEL_META],
    )?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.contains(['<', '>', ' ']))
        .map(str::to_owned)
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x -C DEST PARTS`.
fn unpack(deb: &Path, dest: &Path) -> Result<()> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting dpkg-deb")?;
    let tar_in = dpkg.stdout.take().context("dpkg-deb stdout")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .arg("--wildcards")
        .args(GUEST_KERNEL_PARTS)
        .stdin(tar_in)
        .status()
        .context("starting tar")?;
    let dpkg = dpkg.wait()?;
    if !tar.success() || !dpkg.success() {
        bail!("unpacking {} failed: dpkg-deb {dpkg}, tar {tar}", deb.display());
    }
    Ok(())
}

fn euid() -> u32 {
    // /proc/self/status avoids a libc dependency just for geteuid.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly (is rustup installed?)")?;
    if !out.status.success() {
        run_cmd(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
        return nightly_sysroot();
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("DHCPFIX_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/dhcpfix")
}

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs cargo-fuzz (for `cargo xtask fuzz` and the fuzz build of
/// `cargo xtask test`) into the cache unless it is there; returns the
/// directory holding the `cargo-fuzz` binary.
pub fn cargo_fuzz() -> Result<PathBuf> {
    let root = cache_dir().join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let bin_dir = root.join("bin");
    if bin_dir.join("cargo-fuzz").is_file() {
        return Ok(bin_dir);
    }
    run_cmd(
        Command::new("cargo")
            .args(["install", "--locked", &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}")])
            .arg("--root")
            .arg(&root)
            .current_dir(Path::new("/")),
    )?;
    Ok(bin_dir)
}

/// Builds bpf-linker against the nightly's libLLVM unless the cache has it.
/// Returns the directory holding the `bpf-linker` binary.
fn bpf_linker() -> Result<PathBuf> {
    let lib_dir = nightly_sysroot()?.join("lib");
    let libllvm = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| format!("no libLLVM in {}", lib_dir.display()))?;
    let major = libllvm
        .trim_start_matches("libLLVM.so.")
        .trim_start_matches("libLLVM-")
        .split(['.', '-'])
        .next()
        .filter(|m| m.chars().all(|c| c.is_ascii_digit()) && !m.is_empty())
        .with_context(|| format!("cannot tell the LLVM version of {libllvm}"))?
        .to_owned();
    // The key names the exact libLLVM: a new nightly means a new build.
    let key = libllvm.replace(['/', ' '], "_");
    let root = cache_dir().join(format!("bpf-linker-{BPF_LINKER_VERSION}-{key}"));
    let bin_dir = root.join("bin");
    if bin_dir.join("bpf-linker").is_file() {
        return Ok(bin_dir);
    }
    let prefix = root.join("llvm");
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    symlink(lib_dir.join(&libllvm), &link).with_context(|| format!("linking {}", link.display()))?;
    eprintln!("building bpf-linker {BPF_LINKER_VERSION} against {libllvm} (about 2 minutes, once)");
    run_cmd(
        Command::new("cargo")
            .args(["install", "--locked", &format!("bpf-linker@{BPF_LINKER_VERSION}")])
            .args(["--no-default-features", "--features", &format!("llvm-{major}")])
            .arg("--root")
            .arg(&root)
            .env("LLVM_PREFIX", &prefix)
            // Our workspace's settings must not leak into this build.
            .current_dir(Path::new("/")),
    )?;
    Ok(bin_dir)
}

const CARGO_DEB_VERSION: &str = "3.8.0";
/// The Python tools' pins (kubernetes-validate and friends).
const PYTHON_REQUIREMENTS: &str = "deploy/python-requirements.txt";

/// Paths of the tools `cargo xtask image|deb` and the deploy tests use.
pub struct DeployTools {
    /// The `cargo-deb` binary.
    pub cargo_deb: PathBuf,
    /// The virtualenv's python (kubernetes-validate, the CRD models, PyYAML).
    pub python: PathBuf,
}

/// Installs what the container image needs (idempotent): the Debian
/// packages above and the musl target.
pub fn image() -> Result<()> {
    install_packages(DEPLOY_PACKAGES)?;
    musl_target()
}

/// Installs what packaging and the deploy tests need (idempotent): what
/// [`image`] installs, cargo-deb and the Python tools, each cached under
/// ~/.cache/dhcpfix.
pub fn deploy() -> Result<DeployTools> {
    image()?;
    Ok(DeployTools {
        cargo_deb: cargo_deb()?,
        python: python_tools()?,
    })
}

pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

fn musl_target() -> Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(crate::workspace_root())
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == MUSL_TARGET)
    {
        return Ok(());
    }
    run_cmd(
        Command::new("rustup")
            .args(["target", "add", MUSL_TARGET])
            .current_dir(crate::workspace_root()),
    )
}

/// cargo-deb, pinned, built once into the cache.
fn cargo_deb() -> Result<PathBuf> {
    let root = cache_dir().join(format!("cargo-deb-{CARGO_DEB_VERSION}"));
    let bin = root.join("bin/cargo-deb");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("building cargo-deb {CARGO_DEB_VERSION} (about 3 minutes, once)");
    run_cmd(
        Command::new("cargo")
            .args(["install", "--locked", &format!("cargo-deb@{CARGO_DEB_VERSION}")])
            .arg("--root")
            .arg(&root)
            .current_dir(Path::new("/")),
    )?;
    Ok(bin)
}

/// FNV-1a, to name the virtualenv after the requirements it holds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A virtualenv with deploy/python-requirements.txt, exactly (--no-deps:
/// the file pins every package). A new set of pins means a new virtualenv;
/// a half-made one (no marker) is made again.
fn python_tools() -> Result<PathBuf> {
    let req = crate::workspace_root().join(PYTHON_REQUIREMENTS);
    let text = fs::read(&req).with_context(|| format!("reading {}", req.display()))?;
    let venv = cache_dir().join(format!("deploy-venv-{:016x}", fnv1a(&text)));
    let python = venv.join("bin/python");
    let marker = venv.join(".dhcpfix-installed");
    if marker.is_file() && python.is_file() {
        return Ok(python);
    }
    let _ = fs::remove_dir_all(&venv);
    run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run_cmd(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "-r",
            ])
            .arg(&req),
    )?;
    fs::write(&marker, &text)?;
    Ok(python)
}
