//! Loading the classifier once and sharing it through the pin directory.

use std::path::{Path, PathBuf};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuHashMap, RingBuf},
    programs::{ProgramError, SchedClassifier},
    Ebpf, EbpfLoader,
};
use dhcpfix_common::{
    config::{port_bit, IfaceConfig},
    counters::Counters,
    layout::KernelLayout,
    CONFIG_MAP, COUNTERS_MAP, EVENTS_MAP, LAYOUT_GLOBAL, PORTS_MAP, PROGRAM_NAME, TEST_MODE_GLOBAL,
};

use crate::{
    bpffs::PinDir,
    kernel_layout::{self, LayoutError},
};

/// The classifier object, built by `build.rs` from `dhcpfix-ebpf`.
pub static CLASSIFIER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dhcpfix"));

/// Errors while loading the classifier or opening its pinned maps.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this dhcpfix binary was built without its eBPF program (AYA_BUILD_SKIP=1); rebuild it with `cargo xtask build`")]
    NoObject,
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("parsing the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("the eBPF object has no program or map {0}")]
    Missing(&'static str),
    #[error("loading the classifier failed: {}", summarize(.0))]
    Program(#[source] ProgramError),
    #[error(transparent)]
    Marker(crate::bpffs::BpffsError),
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("the program pinned in {dir} was loaded by an incompatible dhcpfix ({found}; this one needs abi-{}): run `dhcpfix clean --all` (guests are unprotected until the next attach), then attach again", dhcpfix_common::PIN_ABI)]
    OtherVersion { dir: PathBuf, found: String },
    #[error("opening pinned {path}: {source}; run `dhcpfix attach` first, or check --pin-dir")]
    OpenPinned {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::Missing("program"))?
        .try_into()
        .map_err(LoadError::Program)
}

/// Refuses a program (and maps) pinned by a dhcpfix whose records differ
/// from this one's ([`dhcpfix_common::PIN_ABI`]).
pub fn check_abi(pins: &PinDir) -> Result<(), LoadError> {
    if !pins.program().exists() || pins.abi_marker().exists() {
        return Ok(());
    }
    let found = pins.abi_markers();
    Err(LoadError::OtherVersion {
        dir: pins.root().to_path_buf(),
        found: if found.is_empty() {
            "no ABI marker".into()
        } else {
            found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

/// Returns the pinned classifier, loading and pinning it (and its maps)
/// first if this pin directory has none. Call with the directory locked.
pub fn load_or_open(pins: &PinDir, layout: &LayoutSource) -> Result<SchedClassifier, LoadError> {
    let prog_pin = pins.program();
    check_abi(pins)?;
    if !prog_pin.exists() {
        let layout = layout.resolve()?;
        // The marker goes first: a crash before the program is pinned leaves
        // a marker and no program, which the next load repairs.
        crate::bpffs::mkdir_private(&pins.abi_marker()).map_err(LoadError::Marker)?;
        let (config_pin, counters_pin) = (pins.map(CONFIG_MAP), pins.map(COUNTERS_MAP));
        let events_pin = pins.map(EVENTS_MAP);
        let ports_pin = pins.map(PORTS_MAP);
        let mut ebpf = EbpfLoader::new()
            .override_global(LAYOUT_GLOBAL, &layout, true)
            .override_global(TEST_MODE_GLOBAL, &0u32, true)
            .map_pin_path(CONFIG_MAP, config_pin.as_path())
            .map_pin_path(COUNTERS_MAP, counters_pin.as_path())
            .map_pin_path(EVENTS_MAP, events_pin.as_path())
            .map_pin_path(PORTS_MAP, ports_pin.as_path())
            .load(object()?)
            .map_err(LoadError::Object)?;
        let prog = classifier(&mut ebpf, PROGRAM_NAME)?;
        prog.load().map_err(LoadError::Program)?;
        prog.pin(&prog_pin).map_err(|source| LoadError::Pin {
            path: prog_pin.clone(),
            source,
        })?;
    }
    SchedClassifier::from_pin(&prog_pin).map_err(|source| LoadError::OpenPinned {
        path: prog_pin,
        source: Box::new(source),
    })
}

fn open_map(path: &Path) -> Result<aya::maps::Map, LoadError> {
    let data = MapData::from_pin(path).map_err(|source| LoadError::OpenPinned {
        path: path.into(),
        source: Box::new(source),
    })?;
    Ok(aya::maps::Map::HashMap(data))
}

/// The per-interface configuration map.
pub fn config_map(pins: &PinDir) -> Result<HashMap<MapData, u32, IfaceConfig>, LoadError> {
    let path = pins.map(CONFIG_MAP);
    let map = open_map(&path)?;
    HashMap::try_from(map).map_err(|source| LoadError::OpenPinned {
        path,
        source: Box::new(source),
    })
}

/// The per-CPU counters map.
pub fn counters_map(pins: &PinDir) -> Result<PerCpuHashMap<MapData, u32, Counters>, LoadError> {
    let path = pins.map(COUNTERS_MAP);
    let data = MapData::from_pin(&path).map_err(|source| LoadError::OpenPinned {
        path: path.clone(),
        source: Box::new(source),
    })?;
    PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(data)).map_err(|source| LoadError::OpenPinned {
        path,
        source: Box::new(source),
    })
}

/// The ring buffer of fill events (one reader at a time: `dhcpfix run`).
pub fn events_map(pins: &PinDir) -> Result<RingBuf<MapData>, LoadError> {
    let path = pins.map(EVENTS_MAP);
    let data = MapData::from_pin(&path).map_err(|source| LoadError::OpenPinned {
        path: path.clone(),
        source: Box::new(source),
    })?;
    RingBuf::try_from(aya::maps::Map::RingBuf(data)).map_err(|source| LoadError::OpenPinned {
        path,
        source: Box::new(source),
    })
}

/// Sets the bits of `ports` in a watched-ports bitmap. Bits are never
/// cleared: a port watched on no interface only costs the packet the
/// per-interface lookup, which then ignores it.
pub fn watch_ports<T: std::borrow::BorrowMut<MapData>>(
    bitmap: &mut Array<T, u64>,
    ports: &[u16],
) -> Result<(), aya::maps::MapError> {
    for port in ports.iter().copied().filter(|p| *p != 0) {
        let (word, bit) = port_bit(port);
        let value = bitmap.get(&word, 0)?;
        if value & bit == 0 {
            bitmap.set(word, value | bit, 0)?;
        }
    }
    Ok(())
}

/// The pinned watched-ports bitmap.
pub fn ports_map(pins: &PinDir) -> Result<Array<MapData, u64>, LoadError> {
    let path = pins.map(PORTS_MAP);
    let data = MapData::from_pin(&path).map_err(|source| LoadError::OpenPinned {
        path: path.clone(),
        source: Box::new(source),
    })?;
    Array::try_from(aya::maps::Map::Array(data)).map_err(|source| LoadError::OpenPinned {
        path,
        source: Box::new(source),
    })
}

/// A zeroed per-CPU counters record, one per possible CPU.
pub fn zero_counters() -> std::io::Result<aya::maps::PerCpuValues<Counters>> {
    let ncpu = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    aya::maps::PerCpuValues::try_from(vec![Counters::default(); ncpu])
}
