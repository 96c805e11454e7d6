//! Builds the eBPF classifier (`dhcpfix-ebpf`) for `bpfel-unknown-none` with
//! the nightly toolchain and bpf-linker, and places it in `OUT_DIR/dhcpfix`.
//! `cargo xtask build` installs both; `AYA_BUILD_SKIP=1` writes an empty
//! object instead so that `cargo check` and clippy work without them.
//!
//! Rebuilt when: the classifier's directory changes (aya-build says so),
//! its dependencies change (the build-dependency on `dhcpfix-ebpf` in
//! Cargo.toml), or the workspace manifest, which holds the classifier's
//! release profile, changes (below).
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow::anyhow!("OUT_DIR not set"))?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(out_dir.join("dhcpfix"), [])?;
        return Ok(());
    }
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml")
    );
    // The classifier must share the records' version with this build.
    let features: &[&str] = if env::var_os("CARGO_FEATURE_NEXT_ABI").is_some() {
        &["next-abi"]
    } else {
        &[]
    };
    let ebpf = aya_build::Package {
        name: "dhcpfix-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../dhcpfix-ebpf"),
        features,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
