//! The short, always-on version of the fuzz targets: the same bodies
//! (`dhcpfix_fuzz::targets`, fuzz/src/targets.rs) on their seeds and a few
//! thousand deterministic mutations each (`DHCPFIX_FUZZ_SHORT=N` changes
//! the number). The long runs, with libFuzzer and ASan, are
//! `cargo xtask fuzz`.

use std::path::{Path, PathBuf};

use dhcpfix::kernel_layout::{self, Btf};
use dhcpfix_fuzz::targets;
use dhcpfix_lab::kit::reference::Rng;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn short(target: &str, seed: u64) {
    let n = std::env::var("DHCPFIX_FUZZ_SHORT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let ran = targets::short_run(target, &root(), n, seed);
    eprintln!("{target}: {ran} inputs");
}

#[test]
fn frame_parser_agrees_with_the_reference() {
    short("frame", 0xf1);
    // More of the frame shapes the datapath sees: random lengths around
    // every header boundary.
    let mut rng = Rng::new(0xf2);
    for _ in 0..3000 {
        let len = rng.below(120) as usize;
        let mut f = rng.bytes(len);
        if len > 14 && rng.chance(70) {
            f[12..14].copy_from_slice(&[0x08, 0x00]);
        }
        if len > 24 && rng.chance(70) {
            f[14] = 0x45;
            f[23] = 17;
        }
        targets::frame(&f);
    }
}

#[test]
fn btf_resolver_survives_mutations() {
    short("btf", 0xb7);
}

#[test]
fn btf_seeds_are_meaningful() {
    // The realistic blob resolves like the kernel does...
    let l = kernel_layout::resolve(&Btf::parse(targets::sample_btf(0)).unwrap()).unwrap();
    assert_eq!(
        (l.skb_dev, l.skb_ip_summed, l.ip_summed_shift, l.ip_summed_mask),
        (8, 128, 5, 3)
    );
    assert_eq!((l.dev_features, l.csum_features), (184, 0b1010));
    assert_eq!(l.csum6_features, 0b1_1000, "NETIF_F_IPV6_CSUM | NETIF_F_HW_CSUM");
    // The interface's namespace cookie: skb->dev->nd_net.net->net_cookie.
    assert_eq!((l.dev_nd_net, l.net_cookie), (288, 160));
    assert_eq!(
        (l.skb_csum_start, l.skb_csum_offset, l.skb_head, l.skb_data),
        (152, 154, 192, 200)
    );
    let l = kernel_layout::resolve(&Btf::parse(targets::sample_btf(1)).unwrap()).unwrap();
    assert_eq!(l.csum_features, 0b1010, "ENUM64 feature bits");
    let l = kernel_layout::resolve(&Btf::parse(targets::sample_btf(2)).unwrap()).unwrap();
    assert_eq!((l.ip_summed_shift, l.ip_summed_mask), (0, 0xff));
    // ...and without net_device.features it says which member is missing.
    let e = kernel_layout::resolve(&Btf::parse(targets::sample_btf(3)).unwrap()).unwrap_err();
    assert!(e.to_string().contains("net_device.features"), "{e}");
}

/// The running kernel's own BTF (5+ MB, too big for a committed seed) with
/// words of its type section and string table overwritten at random.
#[test]
fn real_kernel_btf_survives_mutations() {
    let Ok(real) = std::fs::read(kernel_layout::VMLINUX_BTF) else {
        eprintln!("skipped: no {}", kernel_layout::VMLINUX_BTF);
        return;
    };
    let start = std::time::Instant::now();
    let layout = kernel_layout::resolve(&Btf::parse(real.clone()).unwrap()).unwrap();
    eprintln!("the real BTF resolves in {:?}: {layout:?}", start.elapsed());
    targets::check_btf(real.clone());
    let mut rng = Rng::new(0x7e41);
    for round in 0..30 {
        let mut blob = real.clone();
        for _ in 0..1 + rng.below(64) {
            // Mostly within the first 64 KiB (header, early types, whose
            // sizes decide how the rest is read), sometimes anywhere.
            let span = if round % 3 == 0 { blob.len() } else { 65536 };
            let at = rng.below((span - 4) as u64) as usize & !3;
            let word = [0u32, 1, 0xffff, u32::MAX, rng.next_u64() as u32][rng.below(5) as usize];
            blob[at..at + 4].copy_from_slice(&word.to_le_bytes());
        }
        targets::check_btf(blob);
    }
}

#[test]
fn layout_spec_survives_mutations() {
    short("layout_spec", 0x15);
}

#[test]
fn interface_patterns_survive_mutations() {
    short("pattern", 0x9a);
}

#[test]
fn config_file_survives_mutations() {
    short("config", 0xc0);
}

#[test]
fn libvirt_domain_xml_survives_mutations() {
    short("libvirt_xml", 0x11);
}

/// Not a test: `cargo xtask fuzz` runs it to write each target's seeds to
/// `$DHCPFIX_FUZZ_SEEDS_DIR/<target>/`, for libFuzzer to start from.
#[test]
#[ignore = "run by cargo xtask fuzz"]
fn write_seeds() {
    let dir = PathBuf::from(std::env::var_os("DHCPFIX_FUZZ_SEEDS_DIR").expect("DHCPFIX_FUZZ_SEEDS_DIR"));
    for target in targets::TARGETS {
        let out = dir.join(target);
        std::fs::create_dir_all(&out).unwrap();
        for (i, seed) in targets::seeds(target, &root()).iter().enumerate() {
            std::fs::write(out.join(format!("seed-{i:03}")), seed).unwrap();
        }
    }
}
