//! The test kit: one copy of each helper the tests, the benchmarks, the
//! fuzz targets and the lab share.
//!
//! | need | where |
//! |---|---|
//! | a program's path, root or skip, polling, one-line output, the iptables workaround | [`tools`] |
//! | run with a time limit, start, stop | [`process`] |
//! | named namespaces, entering one, commands inside one, killing its processes | [`netns`] |
//! | a work directory and namespaces removed on drop, on signals, after a crash | [`sandbox`] |
//! | a test acting on every namespace of the host runs alone | [`gate`] |
//! | bpffs mounts, unmounting below a directory | [`mounts`] |
//! | taps, `AF_PACKET` sockets (with a vnet header: partial checksums) | [`dev`] |
//! | the reference model of the classifier, frames, a PRNG | [`reference`](mod@reference) |
//! | BTF blobs for sample kernels | [`btf`] |
//! | code running as `nobody` (what any local user can do) | [`user`] |

pub mod btf;
pub mod dev;
mod error;
pub mod gate;
pub mod mounts;
pub mod netns;
pub mod process;
pub mod reference;
pub mod sandbox;
pub mod tools;
pub mod user;

pub use error::KitError;
pub use mounts::{mount_bpffs, unmount_below};
pub use sandbox::{Netns, Place, Sandbox};
pub use tools::{checksum_fill_rule, find_tool, is_root, one_line, podman, poll, privileged, PODMAN_ULIMITS};
