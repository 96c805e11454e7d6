//! Developer tasks: `cargo xtask setup|build|test|lint|demo|bench|fuzz|image|deb|manifests`.
//!
//! The only place that knows how to get the eBPF toolchain (nightly
//! `rust-src`, bpf-linker) and the lab's Debian packages onto a machine.
//! Every step is idempotent, so each task runs set-up first.

mod deploy;
mod rules;
mod setup;

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "dhcpfix developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Set up, then build target/release/dhcpfix.
    Build,
    /// Set up, check formatting and lints, build the fuzz targets, the
    /// image and the .deb, run every test (the deploy tests use that image
    /// and .deb).
    Test {
        /// Skip cargo fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Skip building the image and the .deb (the deploy tests that need
        /// them skip, or fail under CI=true).
        #[arg(long)]
        no_deploy: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// cargo fmt --check and clippy -D warnings.
    Lint,
    /// Set up, build, and run `dhcpfix demo`.
    Demo,
    /// Set up, build release binaries, run the benchmarks; writes
    /// BENCHMARKS.md, bench.json and bench.svg at the repository root.
    Bench {
        /// Extra arguments for dhcpfix-bench (after `--`): --quick, --only NAME.
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// Set up (cargo-fuzz too), then run the fuzz targets in fuzz/ with
    /// libFuzzer and ASan (nightly), each for --seconds. Crashes land in
    /// fuzz/artifacts/TARGET/.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (default: all; `cargo fuzz list` in fuzz/).
        target: Option<String>,
    },
    /// Set up, build dhcpfix static (musl) and the container image
    /// localhost/dhcpfix:dev and :<version> with podman.
    Image,
    /// Set up, build dhcpfix static (musl) and
    /// target/debian/dhcpfix_<version>_amd64.deb with cargo-deb.
    Deb,
    /// Write deploy/kubernetes/prometheusrule.yaml from
    /// deploy/prometheus/dhcpfix-rules.yml.
    Manifests {
        /// Only check that it is current.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => {
            setup::all()?;
            setup::deploy().map(|_| ())
        }
        Task::Build => {
            let env = setup::all()?;
            build_release(&env)
        }
        Task::Test {
            no_lint,
            no_deploy,
            cargo_args,
        } => {
            let env = setup::all()?;
            if !no_lint {
                lint(&env)?;
            }
            fuzz_build(&env)?;
            // The image and the .deb first (one static build for both),
            // so the deploy tests use them instead of building their own.
            let deploy_env = if no_deploy {
                Vec::new()
            } else {
                let started = std::time::Instant::now();
                let tools = setup::deploy()?;
                let bin = deploy::musl_release(&env)?;
                deploy::image(&bin)?;
                let deb = deploy::deb(&tools, &bin)?;
                println!(
                    "cargo xtask test: deploy set-up, image and .deb took {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                deploy::test_env(&tools, &deb)
            };
            let next_abi = next_abi_build(&env)?;
            let mut args = vec!["test", "--workspace", "--exclude", "dhcpfix-ebpf"];
            args.extend(cargo_args.iter().map(String::as_str));
            run_cmd(
                cargo_command(&env, &args)
                    .envs(deploy_env.iter().map(|(k, v)| (*k, v.as_str())))
                    .env(NEXT_ABI_VAR, &next_abi),
            )
        }
        Task::Lint => {
            let env = setup::all()?;
            lint(&env)
        }
        Task::Demo => {
            let env = setup::all()?;
            build_release(&env)?;
            let bin = workspace_root().join("target/release/dhcpfix");
            run_cmd(Command::new(bin).arg("demo").envs(env.vars()))
        }
        Task::Bench { bench_args } => bench(&bench_args),
        Task::Fuzz { seconds, target } => fuzz(seconds, target.as_deref()),
        Task::Image => {
            let env = setup::all()?;
            setup::image()?;
            let bin = deploy::musl_release(&env)?;
            deploy::image(&bin).map(|_| ())
        }
        Task::Deb => {
            let env = setup::all()?;
            let tools = setup::deploy()?;
            let bin = deploy::musl_release(&env)?;
            deploy::deb(&tools, &bin).map(|_| ())
        }
        Task::Manifests { check } => deploy::manifests(check),
    }
}

/// Fuzz targets, as in fuzz/Cargo.toml.
const FUZZ_TARGETS: [&str; 6] = ["frame", "btf", "layout_spec", "pattern", "config", "libvirt_xml"];

/// `cargo xtask fuzz`: seeds from the short version's test
/// (dhcpfix/tests/integration/fuzz_short.rs), then `cargo +nightly fuzz
/// run` per target.
fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match only {
        Some(t) if FUZZ_TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}; there are {}", FUZZ_TARGETS.join(", ")),
        None => FUZZ_TARGETS.to_vec(),
    };
    let env = setup::all()?;
    let root = workspace_root();
    let seeds = root.join("fuzz/seeds");
    let mut write_seeds = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    write_seeds
        .args([
            "test",
            "-p",
            "dhcpfix",
            "--test",
            "integration",
            "--",
            "--ignored",
            "--exact",
            "fuzz_short::write_seeds",
        ])
        .current_dir(&root)
        .envs(env.vars())
        .env("DHCPFIX_FUZZ_SEEDS_DIR", &seeds);
    run_cmd(&mut write_seeds)?;
    for target in targets {
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        run_cmd(
            cargo_fuzz(&env)?
                .args(["run", "--target-dir"])
                .arg(root.join("target/fuzz"))
                .arg(target)
                .arg(&corpus)
                .arg(seeds.join(target))
                .arg("--")
                .arg(format!("-max_total_time={seconds}")),
        )?;
    }
    Ok(())
}

/// What `cargo xtask test` checks of the fuzz targets: that they build with
/// libFuzzer and ASan as `cargo xtask fuzz` builds them, but unoptimized
/// (`--dev`: a cold build takes about 2 minutes here, the release build
/// `cargo fuzz run` makes about 6), in a target directory of their own.
fn fuzz_build(env: &setup::Env) -> Result<()> {
    run_cmd(
        cargo_fuzz(env)?
            .args(["build", "--dev", "--target-dir"])
            .arg(workspace_root().join("target/fuzz-check")),
    )
}

/// `cargo +nightly fuzz` (cargo-fuzz set up first), run from the workspace
/// root on fuzz/.
fn cargo_fuzz(env: &setup::Env) -> Result<Command> {
    let fuzz_bin = setup::cargo_fuzz()?;
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(workspace_root())
        .env("PATH", format!("{}:{}", fuzz_bin.display(), env.vars()["PATH"]))
        // The fuzz targets do not load the eBPF object.
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN");
    Ok(cmd)
}

/// `cargo xtask bench`: set-up, release build, then the benchmark binary
/// against the release `dhcpfix`, writing its report at the repository root.
fn bench(bench_args: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    let env = setup::all()?;
    cargo(
        &env,
        &[
            "build",
            "--release",
            "--package",
            "dhcpfix",
            "--package",
            "dhcpfix-bench",
        ],
    )?;
    // The image, for the every-namespace section's container figures.
    setup::image()?;
    let bin = deploy::musl_release(&env)?;
    deploy::image(&bin)?;
    let root = workspace_root();
    // Where cargo put them: CARGO_TARGET_DIR (relative to the root) or target/.
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"))
        .join("release");
    run_cmd(
        Command::new(release.join("dhcpfix-bench"))
            .arg("--dhcpfix")
            .arg(release.join("dhcpfix"))
            .arg("--out")
            .arg(&root)
            .args(bench_args)
            .current_dir(&root)
            .envs(env.vars()),
    )?;
    println!(
        "cargo xtask bench: done in {:.1} minutes (set-up and build included)",
        started.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

/// Where the upgrade tests find the "newer dhcpfix"
/// (dhcpfix/tests/integration/upgrade.rs).
const NEXT_ABI_VAR: &str = "DHCPFIX_TEST_NEXT_ABI";

/// Builds the `next-abi` dhcpfix (PIN_ABI 3, other records) that the
/// upgrade tests take over this build's pins with, into its own target
/// directory (kept: later runs rebuild only what changed). Returns its path.
fn next_abi_build(env: &setup::Env) -> Result<PathBuf> {
    let target = workspace_root().join("target/next-abi");
    let mut cmd = cargo_command(
        env,
        &[
            "build",
            "--package",
            "dhcpfix",
            "--features",
            "next-abi",
            "--target-dir",
        ],
    );
    run_cmd(cmd.arg(&target))?;
    Ok(target.join("debug/dhcpfix"))
}

fn build_release(env: &setup::Env) -> Result<()> {
    cargo(env, &["build", "--release", "--package", "dhcpfix"])?;
    println!(
        "built {}",
        workspace_root().join("target/release/dhcpfix").display()
    );
    Ok(())
}

fn lint(env: &setup::Env) -> Result<()> {
    cargo(env, &["fmt", "--all", "--check"])?;
    cargo(
        env,
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "dhcpfix-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The classifier only builds for the BPF target, with the nightly and
    // build-std, the way aya-build builds it.
    let target_dir = workspace_root().join("target/clippy-ebpf");
    run_cmd(
        Command::new("rustup")
            .args(["run", "nightly", "cargo", "clippy", "-Z", "build-std=core"])
            .args([
                "--target",
                "bpfel-unknown-none",
                "--release",
                "--package",
                "dhcpfix-ebpf",
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .args(["--", "-D", "warnings"])
            .current_dir(workspace_root())
            .envs(env.vars())
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
            )
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo(env: &setup::Env, args: &[&str]) -> Result<()> {
    run_cmd(&mut cargo_command(env, args))
}

/// `cargo ARGS` at the workspace root with the set-up's environment.
fn cargo_command(env: &setup::Env, args: &[&str]) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root()).envs(env.vars());
    cmd
}

/// Runs `cmd`, inheriting stdio; fails on a non-zero exit.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(OsStr::to_string_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    );
    eprintln!("+ {shown}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 4: dhcpfix's build.rs builds the classifier (dhcpfix-ebpf's
    /// binary) through aya-build, behind cargo's back. Only a declared
    /// build-dependency on dhcpfix-ebpf (its library target, built for the
    /// host) makes cargo run that build script again when the classifier's
    /// dependencies (dhcpfix-common, aya-ebpf) change; without it the
    /// object can be stale.
    #[test]
    fn dhcpfix_declares_its_classifier_as_a_build_dependency() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
            .current_dir(workspace_root())
            .output()
            .expect("run cargo metadata");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
        let package = |name: &str| {
            meta["packages"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["name"] == name))
                .unwrap_or_else(|| panic!("no package {name} in the workspace"))
                .clone()
        };
        let kinds: Vec<String> = package("dhcpfix")["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["name"] == "dhcpfix-ebpf")
            .map(|d| d["kind"].as_str().unwrap_or("normal").to_owned())
            .collect();
        assert_eq!(
            kinds,
            ["build"],
            "dhcpfix's dependencies on dhcpfix-ebpf, by kind"
        );
        let has_lib = package("dhcpfix-ebpf")["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .any(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "lib")));
        assert!(
            has_lib,
            "dhcpfix-ebpf needs a library target to be a build-dependency"
        );
    }
}
