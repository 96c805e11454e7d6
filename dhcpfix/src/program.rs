//! Loading the classifier once and sharing it through the pin directory.

use std::path::PathBuf;

use aya::{
    programs::{ProgramError, SchedClassifier},
    Ebpf, EbpfLoader,
};
use dhcpfix_common::{
    layout::KernelLayout, CONFIG_MAP, COUNTERS_MAP, EVENTS_MAP, GUESTS_MAP, INGRESS_PROGRAM_NAME,
    LAYOUT_GLOBAL, PORTS_MAP, PROGRAM_NAME, SETTINGS_MAP, TEST_MODE_GLOBAL,
};

use crate::{
    kernel_layout::{self, LayoutError},
    netns::{self, Netns},
    pins::{self, PinDir, PinsError},
};

/// The classifier object, built by `build.rs` from `dhcpfix-ebpf`.
pub static CLASSIFIER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dhcpfix"));

/// The maps the loader pins (the classifier's aya-log buffer is not: it
/// lives as long as the program, and `dhcpfix run` finds it through it).
pub const PINNED_MAPS: [&str; 6] = [
    CONFIG_MAP,
    COUNTERS_MAP,
    PORTS_MAP,
    EVENTS_MAP,
    SETTINGS_MAP,
    GUESTS_MAP,
];

/// Errors while loading the classifier.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this dhcpfix binary was built without its eBPF program (AYA_BUILD_SKIP=1); rebuild it with `cargo xtask build`")]
    NoObject,
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("parsing the eBPF object: {0}")]
    Object(String),
    #[error("the eBPF object has no program or map {0}")]
    Missing(&'static str),
    #[error("loading the classifier failed: {}", summarize(.0))]
    Program(ProgramError),
    #[error(transparent)]
    Pins(#[from] PinsError),
    #[error("pinning {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("the program pinned in {dir} was loaded by a dhcpfix this one does not know ({found}; this one uses abi-{}), probably a newer one: use that one, or run `dhcpfix clean --all` (guests are unprotected until the next attach) and attach again", dhcpfix_common::PIN_ABI)]
    OtherVersion { dir: PathBuf, found: String },
    #[error("opening pinned {path}: {reason}; run `dhcpfix attach` first, or check --pin-dir")]
    OpenPinned { path: PathBuf, reason: String },
    #[error("upgrading the pins of an older dhcpfix: {0}")]
    Upgrade(String),
}

/// One line for an operator: the syscall, the errno, and the verifier's
/// last word. The full verifier log goes to the debug log (RUST_LOG=debug).
fn summarize(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            log::debug!("verifier log:\n{verifier_log}");
            let last = verifier_log
                .to_string()
                .lines()
                .rev()
                .find(|l| {
                    !l.trim().is_empty()
                        && !l.starts_with("verification time")
                        && !l.starts_with("processed ")
                        && !l.starts_with("stack depth")
                })
                .unwrap_or_default()
                .to_owned();
            if io_error.raw_os_error() == Some(libc::EPERM) {
                format!("BPF_PROG_LOAD: {io_error}; dhcpfix needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")
            } else {
                format!("BPF_PROG_LOAD: {io_error}; the verifier said: {last} (RUST_LOG=debug shows the whole log)")
            }
        }
        other => other.to_string(),
    }
}

/// Where the classifier gets the kernel layout from.
#[derive(Clone, Debug, Default)]
pub enum LayoutSource {
    /// The running kernel's BTF (`/sys/kernel/btf/vmlinux`).
    #[default]
    Kernel,
    /// Another BTF file (for kernels whose BTF lives elsewhere).
    BtfFile(PathBuf),
    /// Offsets given by the operator (`--kernel-layout`).
    Explicit(KernelLayout),
}

impl LayoutSource {
    /// Resolves the layout.
    pub fn resolve(&self) -> Result<KernelLayout, LayoutError> {
        match self {
            Self::Kernel => kernel_layout::resolve_from(None),
            Self::BtfFile(path) => kernel_layout::resolve_from(Some(path)),
            Self::Explicit(layout) => Ok(*layout),
        }
    }
}

fn object() -> Result<&'static [u8], LoadError> {
    if CLASSIFIER_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    Ok(CLASSIFIER_OBJECT)
}

pub(crate) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::Missing("program"))?
        .try_into()
        .map_err(LoadError::Program)
}

/// The older versions' records in the pin directory that this version can
/// move in place ([`pins::upgrade`]); refuses a directory with records it
/// does not know (a newer dhcpfix's): writing ours next to them would leave
/// guests attached to a program this one cannot read or update.
pub fn check_abi(pins: &PinDir) -> Result<Vec<u32>, LoadError> {
    let mut older = Vec::new();
    let mut unknown = Vec::new();
    for found in pins::other_versions(pins) {
        match found.strip_prefix("abi-").and_then(|v| v.parse::<u32>().ok()) {
            Some(v) if pins::upgrade::known_older().contains(&v) => older.push(v),
            _ => unknown.push(found),
        }
    }
    if !unknown.is_empty() {
        return Err(LoadError::OtherVersion {
            dir: pins.path().to_path_buf(),
            found: unknown.join(", "),
        });
    }
    older.sort();
    Ok(older)
}

/// The pinned ingress program (what guests send).
pub fn open_ingress(pins: &PinDir) -> Result<SchedClassifier, LoadError> {
    let rel = pins::ingress_program_rel();
    SchedClassifier::from_pin(pins.fd_path(&rel)).map_err(|e| LoadError::OpenPinned {
        path: pins.shown(&rel),
        reason: e.to_string(),
    })
}

/// Whether this pin directory has the classifier loaded.
pub fn is_loaded(pins: &PinDir) -> bool {
    pins.exists(&pins::program_rel())
}

/// Returns the pinned classifier, loading and pinning it (and its maps)
/// first if this pin directory has none, and moving an older version's
/// attachments to it in place. Call with the directory locked.
pub fn load_or_open(pins: &PinDir, layout: &LayoutSource) -> Result<SchedClassifier, LoadError> {
    let older = check_abi(pins)?;
    let prog = load_or_open_current(pins, layout)?;
    for version in older {
        // dhcpfix 0.1's directory served the namespace its commands ran in:
        // this process's (its main thread's, not a namespace thread's).
        let here = Netns::open_path(std::path::Path::new("/proc/self/ns/net"), "this process's".into())
            .map_err(|e| LoadError::Upgrade(e.to_string()))?;
        let done = pins::upgrade::run(pins, version, &prog, &here, &netns::scan(false))?;
        log::info!(
            "moved {} link(s) and {} netlink filter(s) of {} to abi-{} in place ({} of deleted interfaces dropped)",
            done.links,
            done.filters,
            done.from,
            dhcpfix_common::PIN_ABI,
            done.dropped
        );
    }
    Ok(prog)
}

/// Key and value sizes of the maps this build pins (the ring buffer's are 0).
fn expected_sizes(name: &str) -> Option<(u32, u32)> {
    use dhcpfix_common::{
        config::IfaceConfig, counters::Counters, guest::GuestKey, key::IfaceKey, settings::Settings,
    };
    use std::mem::size_of;
    let sizes = match name {
        CONFIG_MAP => (size_of::<IfaceKey>(), size_of::<IfaceConfig>()),
        COUNTERS_MAP => (size_of::<IfaceKey>(), size_of::<Counters>()),
        GUESTS_MAP => (
            size_of::<GuestKey>(),
            size_of::<dhcpfix_common::guest::GuestState>(),
        ),
        SETTINGS_MAP => (4, size_of::<Settings>()),
        PORTS_MAP => (4, 8),
        EVENTS_MAP => (0, 0),
        _ => return None,
    };
    Some((sizes.0 as u32, sizes.1 as u32))
}

/// Maps pinned without a program are what a load that stopped half-way
/// left. The kernel would hand them to the new program as they are, so one
/// with another layout (a development build of the same ABI) is removed
/// rather than reused: the verifier would refuse the program, or worse.
fn drop_mismatched_maps(pins: &PinDir) -> Result<(), LoadError> {
    for name in PINNED_MAPS {
        let rel = pins::map_rel(name);
        if !pins.exists(&rel) {
            continue;
        }
        let Some(expected) = expected_sizes(name) else {
            continue;
        };
        let found = aya::maps::MapInfo::from_pin(pins.fd_path(&rel))
            .map(|info| (info.key_size(), info.value_size()))
            .map_err(|e| LoadError::OpenPinned {
                path: pins.shown(&rel),
                reason: e.to_string(),
            })?;
        if found != expected {
            log::warn!(
                "{}: pinned with key/value sizes {}/{}, this build uses {}/{}: removing it",
                pins.shown(&rel).display(),
                found.0,
                found.1,
                expected.0,
                expected.1
            );
            pins.remove(&rel)?;
        }
    }
    Ok(())
}

fn load_or_open_current(pins: &PinDir, layout: &LayoutSource) -> Result<SchedClassifier, LoadError> {
    let prog_rel = pins::program_rel();
    if !pins.exists(&prog_rel) {
        let layout = layout.resolve()?;
        pins.mkdir(&pins::abi_dir())?;
        pins.mkdir(&pins::maps_rel())?;
        let paths: Vec<(&str, PathBuf)> = PINNED_MAPS
            .iter()
            .map(|name| (*name, pins.fd_path(&pins::map_rel(name))))
            .collect();
        drop_mismatched_maps(pins)?;
        let mut loader = EbpfLoader::new();
        loader
            .override_global(LAYOUT_GLOBAL, &layout, true)
            .override_global(TEST_MODE_GLOBAL, &0u32, true);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(object()?)
            .map_err(|e| LoadError::Object(e.to_string()))?;
        // The ingress program first: a crash between the two leaves no
        // egress program, so the next load starts over.
        for (name, rel) in [
            (INGRESS_PROGRAM_NAME, pins::ingress_program_rel()),
            (PROGRAM_NAME, prog_rel.clone()),
        ] {
            if pins.exists(&rel) {
                let _ = pins.remove(&rel);
            }
            let prog = classifier(&mut ebpf, name)?;
            prog.load().map_err(LoadError::Program)?;
            prog.pin(pins.fd_path(&rel)).map_err(|e| LoadError::Pin {
                path: pins.shown(&rel),
                reason: e.to_string(),
            })?;
        }
    }
    SchedClassifier::from_pin(pins.fd_path(&prog_rel)).map_err(|e| LoadError::OpenPinned {
        path: pins.shown(&prog_rel),
        reason: e.to_string(),
    })
}
