use which::which;

/// Rebuild when the bpf-linker binary changes: cargo cannot see this
/// dependency on its own (no artifact dependencies for build-std targets yet).
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
