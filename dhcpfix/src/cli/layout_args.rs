//! The kernel-layout flags shared by every command that may load the
//! classifier (`attach`, `run`, `libvirt-hook`).

use std::path::PathBuf;

use dhcpfix::{kernel_layout::LayoutSpec, program::LayoutSource};

#[derive(Debug, Clone, clap::Args)]
pub struct LayoutArgs {
    /// Read the kernel layout from this BTF file instead of
    /// /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE", conflicts_with = "kernel_layout")]
    pub btf: Option<PathBuf>,
    /// Use these kernel offsets instead of BTF (at your own risk):
    /// skb_dev=N,ip_summed=BYTE:SHIFT,dev_features=N,nd_net=N,net_cookie=N,csum_bits=B+B[,csum6_bits=B+B]
    #[arg(long, value_name = "SPEC")]
    pub kernel_layout: Option<LayoutSpec>,
}

impl LayoutArgs {
    /// Where the classifier's kernel offsets come from.
    pub fn source(&self) -> LayoutSource {
        match (&self.btf, &self.kernel_layout) {
            (Some(path), _) => LayoutSource::BtfFile(path.clone()),
            (None, Some(spec)) => LayoutSource::Explicit(spec.0),
            (None, None) => LayoutSource::Kernel,
        }
    }
}
