//! Idempotent set-up of the eBPF toolchain and the lab's packages.
//!
//! - Debian packages for the lab and tests (dnsmasq, dhclient, busybox...).
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
/// Debian packages and a command each provides, to check without dpkg.
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
    // libfuzzer-sys compiles libFuzzer (C++) for the fuzz targets.
    ("g++", "g++"),
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
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(cmd).is_file())
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, cmd)| !have(cmd))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if euid() != 0 {
        bail!(
            "missing packages {}: run as root or apt-get install them",
            missing.join(" ")
        );
    }
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
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
