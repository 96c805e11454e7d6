//! `cargo xtask image|deb|manifests`: the container image, the Debian
//! package, and the generated PrometheusRule.
//!
//! Both artifacts carry the same binary: dhcpfix built once for
//! x86_64-unknown-linux-musl (static; the eBPF object is embedded by
//! build.rs as for any target), so `cargo xtask test` builds it once for
//! both and the .deb runs on any Debian or Ubuntu release.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    rules, run_cmd,
    setup::{self, DeployTools, MUSL_TARGET},
    workspace_root,
};

/// The image's name; tagged `dev` and the version.
pub const IMAGE: &str = "localhost/dhcpfix";
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn target_dir() -> PathBuf {
    let root = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"))
}

/// Builds the static release binary; returns its path.
pub fn musl_release(env: &setup::Env) -> Result<PathBuf> {
    crate::cargo(
        env,
        &[
            "build",
            "--release",
            "--package",
            "dhcpfix",
            "--target",
            MUSL_TARGET,
        ],
    )?;
    let bin = target_dir().join(MUSL_TARGET).join("release/dhcpfix");
    if !bin.is_file() {
        bail!("cargo built no {}", bin.display());
    }
    Ok(bin)
}

/// A fresh, empty directory `dir`.
fn fresh_dir(dir: PathBuf) -> Result<PathBuf> {
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Seconds since the epoch of HEAD's commit (reproducible image dates), or 0.
fn source_date() -> String {
    Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| "0".into())
}

/// Builds `localhost/dhcpfix:dev` and `:<version>` from `bin` (stripped),
/// with podman, offline. Returns the image's size in bytes.
pub fn image(bin: &Path) -> Result<u64> {
    let context = fresh_dir(target_dir().join("image"))?;
    run_cmd(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(context.join("dhcpfix"))
            .arg(bin),
    )?;
    fs::copy(
        workspace_root().join("deploy/image/Containerfile"),
        context.join("Containerfile"),
    )?;
    run_cmd(
        Command::new("podman")
            .args(["build", "--quiet", "--pull=never"])
            .args(["--timestamp", &source_date()])
            .args(["--build-arg", &format!("VERSION={VERSION}")])
            .args(["--tag", &format!("{IMAGE}:dev")])
            .args(["--tag", &format!("{IMAGE}:{VERSION}")])
            .arg(&context),
    )?;
    let out = Command::new("podman")
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Size}}",
            &format!("{IMAGE}:dev"),
        ])
        .output()
        .context("running podman image inspect")?;
    let size: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| {
            format!(
                "podman image inspect said {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
    println!(
        "built {IMAGE}:dev and {IMAGE}:{VERSION}: {:.2} MB",
        size as f64 / 1e6
    );
    Ok(size)
}

/// The .deb's path: target/debian/dhcpfix_<version>_amd64.deb.
pub fn deb_path() -> PathBuf {
    target_dir().join(format!("debian/dhcpfix_{VERSION}_amd64.deb"))
}

/// Where the contrib files install by hand (/usr/local), and where the
/// package puts the binary.
const HAND_BIN: &str = "/usr/local/sbin/dhcpfix";
const DEB_BIN: &str = "/usr/sbin/dhcpfix";

/// `text` with the hand-install paths replaced by the package's; fails if
/// `text` has none, or keeps any /usr/local path (the file changed shape).
fn packaged(name: &str, text: &str) -> Result<String> {
    if !text.contains(HAND_BIN) {
        bail!("{name} no longer names {HAND_BIN}: update xtask/src/deploy.rs");
    }
    let out = text
        .replace(HAND_BIN, DEB_BIN)
        .replace("/usr/local/share/doc/dhcpfix", "/usr/share/doc/dhcpfix");
    if out.contains("/usr/local") {
        bail!("{name} still names a /usr/local path after adjusting it for the package");
    }
    Ok(out)
}

/// Generated and adjusted files the package ships (see dhcpfix/Cargo.toml's
/// [package.metadata.deb]): man pages and completions from the binary's
/// clap definitions, and the systemd units and libvirt hook with the
/// package's binary path.
/// (In the source tree, git-ignored: cargo-deb warns about asset paths under
/// target/ other than its built binaries.)
fn deb_assets(bin: &Path) -> Result<()> {
    let dir = fresh_dir(workspace_root().join("deploy/debian/generated"))?;
    run_cmd(Command::new(bin).args(["generate", "man"]).arg(dir.join("man")))?;
    for shell in ["bash", "zsh", "fish"] {
        run_cmd(
            Command::new(bin)
                .args(["generate", "completions", shell])
                .arg(dir.join("completions")),
        )?;
    }
    let contrib = workspace_root().join("contrib");
    for (src, dst) in [
        ("systemd/dhcpfix.service", "systemd/dhcpfix.service"),
        (
            "systemd/dhcpfix-attach@.service",
            "systemd/dhcpfix-attach@.service",
        ),
        ("libvirt/qemu.d/dhcpfix", "libvirt/dhcpfix"),
    ] {
        let text = fs::read_to_string(contrib.join(src)).with_context(|| format!("reading contrib/{src}"))?;
        let out = dir.join(dst);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&out, packaged(src, &text)?)?;
    }
    Ok(())
}

/// Builds target/debian/dhcpfix_<version>_amd64.deb from `bin` (the musl
/// build, which cargo-deb strips). Returns its path.
pub fn deb(tools: &DeployTools, bin: &Path) -> Result<PathBuf> {
    deb_assets(bin)?;
    let out = deb_path();
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    run_cmd(
        Command::new(&tools.cargo_deb)
            .args(["--package", "dhcpfix", "--no-build", "--target", MUSL_TARGET])
            .arg("--output")
            .arg(&out)
            .current_dir(workspace_root()),
    )?;
    let size = fs::metadata(&out)
        .with_context(|| format!("cargo-deb wrote no {}", out.display()))?
        .len();
    println!("built {} ({:.2} MB)", out.display(), size as f64 / 1e6);
    Ok(out)
}

/// `cargo xtask manifests`: writes deploy/kubernetes/prometheusrule.yaml from
/// deploy/prometheus/dhcpfix-rules.yml; with `check`, only says whether it is
/// current.
pub fn manifests(check: bool) -> Result<()> {
    let root = workspace_root();
    let rules_text =
        fs::read_to_string(root.join(rules::RULES)).with_context(|| format!("reading {}", rules::RULES))?;
    let want = rules::prometheus_rule(&rules_text);
    let path = root.join(rules::PROMETHEUS_RULE);
    let have = fs::read_to_string(&path).unwrap_or_default();
    if have == want {
        println!("{} is current", rules::PROMETHEUS_RULE);
        return Ok(());
    }
    if check {
        bail!(
            "{} is out of date with {}: run `cargo xtask manifests`",
            rules::PROMETHEUS_RULE,
            rules::RULES
        );
    }
    fs::write(&path, want)?;
    println!("wrote {}", rules::PROMETHEUS_RULE);
    Ok(())
}

/// Environment for the deploy tests (dhcpfix/tests/deploy.rs): where the
/// artifacts and tools are.
pub fn test_env(tools: &DeployTools, deb: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("DHCPFIX_TEST_DEB", deb.display().to_string()),
        ("DHCPFIX_TEST_IMAGE", format!("{IMAGE}:dev")),
        ("DHCPFIX_TEST_PYTHON", tools.python.display().to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packaged_paths() {
        let unit = "ExecStart=/usr/local/sbin/dhcpfix run\nDocumentation=file:///usr/local/share/doc/dhcpfix/README.md\n";
        assert_eq!(
            packaged("u", unit).unwrap(),
            "ExecStart=/usr/sbin/dhcpfix run\nDocumentation=file:///usr/share/doc/dhcpfix/README.md\n"
        );
        assert!(packaged("u", "ExecStart=/usr/bin/true\n").is_err());
        assert!(packaged("u", "/usr/local/sbin/dhcpfix /usr/local/lib/x\n").is_err());
    }
}
