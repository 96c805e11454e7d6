//! Resolves the kernel structure offsets the classifier needs from BTF.
//!
//! `__sk_buff` exposes neither `ip_summed` nor the device's features, so the
//! classifier reads them from the real `struct sk_buff` and
//! `struct net_device` with `bpf_probe_read_kernel`. Their offsets differ
//! between kernel builds; this module reads them from the running kernel's
//! BTF (`/sys/kernel/btf/vmlinux`, Linux >= 5.4 with `CONFIG_DEBUG_INFO_BTF`)
//! with a small parser of the BTF format (`Documentation/bpf/btf.rst`).
//! Little-endian BTF only, like the classifier (`bpfel`).

use std::{fmt, fs, path::Path, str::FromStr};

use dhcpfix_common::layout::{KernelLayout, LAYOUT_HAS_CSUM_START, LAYOUT_VALID};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Errors while resolving the kernel layout. One line each, cause
/// included (no `source()`, so a chain never prints it twice).
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading kernel BTF {path}: {error}; the kernel needs CONFIG_DEBUG_INFO_BTF (Linux >= 5.4), or pass --btf FILE or --kernel-layout SPEC")]
    Read { path: String, error: std::io::Error },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}; pass --kernel-layout SPEC to override")]
    MissingStruct(&'static str),
    #[error("kernel BTF has no member {ty}.{member}; pass --kernel-layout SPEC to override")]
    MissingMember { ty: &'static str, member: &'static str },
    #[error("kernel BTF has no enum value {0}; pass --kernel-layout SPEC to override")]
    MissingEnum(&'static str),
    #[error("kernel member {0} has an unexpected shape ({1}); pass --kernel-layout SPEC to override")]
    Unexpected(&'static str, &'static str),
    #[error("invalid --kernel-layout {0:?}: expected skb_dev=N,ip_summed=BYTE:SHIFT,dev_features=N,nd_net=N,net_cookie=N,csum_bits=B[+B...][,csum6_bits=B[+B...]]")]
    BadSpec(String),
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
/// Anonymous members nest this deep at most (sk_buff uses 3).
const MAX_NESTING: u32 = 8;

#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: u32,
    size_or_type: u32,
    /// Byte offset of the kind-specific data following the common header.
    extra: usize,
}

/// A parsed BTF blob: just enough to find struct members and enum values.
pub struct Btf {
    data: Vec<u8>,
    strings: (usize, usize),
    types: Vec<Type>,
}

/// Where a struct member lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Offset from the start of the outer struct, in bits.
    pub bit_offset: u32,
    /// Width of a bitfield in bits; 0 for an ordinary member.
    pub bitfield_size: u32,
    /// Type id of the member.
    pub type_id: u32,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        data.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

impl Btf {
    /// Reads and parses a BTF file.
    pub fn from_file(path: &Path) -> Result<Self, LayoutError> {
        let data = fs::read(path).map_err(|error| LayoutError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(data)
    }

    /// Parses raw BTF (a `.BTF` section or `/sys/kernel/btf/vmlinux`).
    pub fn parse(data: Vec<u8>) -> Result<Self, LayoutError> {
        use LayoutError::Malformed;
        let magic = u16_at(&data, 0).ok_or(Malformed("truncated header"))?;
        if magic != BTF_MAGIC {
            return Err(Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(&data, 4).ok_or(Malformed("truncated header"))? as usize;
        let field = |at| {
            u32_at(&data, at)
                .map(|v| v as usize)
                .ok_or(Malformed("truncated header"))
        };
        let (type_off, type_len, str_off, str_len) = (field(8)?, field(12)?, field(16)?, field(20)?);
        let span = |off: usize, len: usize| -> Result<(usize, usize), LayoutError> {
            let start = hdr_len
                .checked_add(off)
                .ok_or(Malformed("section offset overflows"))?;
            let end = start
                .checked_add(len)
                .ok_or(Malformed("section length overflows"))?;
            if end > data.len() {
                return Err(Malformed("section beyond end of data"));
            }
            Ok((start, end))
        };
        let (types_start, types_end) = span(type_off, type_len)?;
        let strings = span(str_off, str_len)?;
        let mut types = Vec::new();
        let mut at = types_start;
        while at < types_end {
            let (Some(name_off), Some(info), Some(size_or_type)) =
                (u32_at(&data, at), u32_at(&data, at + 4), u32_at(&data, at + 8))
            else {
                return Err(Malformed("truncated type"));
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = at + 12;
            let extra_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(Malformed("unknown type kind")),
            };
            at = extra + extra_len;
            if at > types_end {
                return Err(Malformed("type data beyond type section"));
            }
            types.push(Type {
                name_off,
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                size_or_type,
                extra,
            });
        }
        Ok(Self { data, strings, types })
    }

    fn name(&self, off: u32) -> &[u8] {
        let (start, end) = self.strings;
        let Some(from) = start.checked_add(off as usize).filter(|f| *f < end) else {
            return b"";
        };
        let rest = &self.data[from..end];
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// The id of the (complete) struct called `name`.
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && t.vlen > 0 && self.name(t.name_off) == name.as_bytes())
            .map(|i| i as u32 + 1)
    }

    /// Finds `member` in struct `id`, looking into anonymous struct and union
    /// members the way C name lookup does.
    pub fn member(&self, id: u32, member: &str) -> Option<Member> {
        self.member_in(id, member.as_bytes(), 0)
    }

    fn member_in(&self, id: u32, member: &[u8], depth: u32) -> Option<Member> {
        if depth > MAX_NESTING {
            return None;
        }
        let ty = self.resolve(id)?;
        if ty.kind != KIND_STRUCT && ty.kind != KIND_UNION {
            return None;
        }
        for i in 0..ty.vlen as usize {
            let at = ty.extra + 12 * i;
            let (name_off, type_id, raw) = (
                u32_at(&self.data, at)?,
                u32_at(&self.data, at + 4)?,
                u32_at(&self.data, at + 8)?,
            );
            let (bit_offset, bitfield_size) = if ty.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            let name = self.name(name_off);
            if name == member {
                return Some(Member {
                    bit_offset,
                    bitfield_size,
                    type_id,
                });
            }
            if name.is_empty() {
                if let Some(inner) = self.member_in(type_id, member, depth + 1) {
                    // Offsets come from the file: a sum past u32 is malformed
                    // BTF, not a place in a struct.
                    return Some(Member {
                        bit_offset: bit_offset.checked_add(inner.bit_offset)?,
                        ..inner
                    });
                }
            }
        }
        None
    }

    /// Size in bytes of the type `id` (after typedefs), if it has one.
    pub fn size_of(&self, id: u32) -> Option<u32> {
        let ty = self.resolve(id)?;
        match ty.kind {
            KIND_PTR => Some(8),
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Some(ty.size_or_type)
            }
            _ => None,
        }
    }

    /// The value of the enumerator `name` in any enum.
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        for ty in &self.types {
            let stride = match ty.kind {
                KIND_ENUM => 8,
                KIND_ENUM64 => 12,
                _ => continue,
            };
            for i in 0..ty.vlen as usize {
                let at = ty.extra + stride * i;
                if self.name(u32_at(&self.data, at)?) != name.as_bytes() {
                    continue;
                }
                let lo = u32_at(&self.data, at + 4)?;
                return Some(if ty.kind == KIND_ENUM {
                    i64::from(lo as i32)
                } else {
                    i64::from(lo) | (i64::from(u32_at(&self.data, at + 8)?) << 32)
                });
            }
        }
        None
    }
}

/// Resolves the classifier's [`KernelLayout`] from `btf`.
pub fn resolve(btf: &Btf) -> Result<KernelLayout, LayoutError> {
    let skb = btf
        .struct_id("sk_buff")
        .ok_or(LayoutError::MissingStruct("sk_buff"))?;
    let dev = btf
        .struct_id("net_device")
        .ok_or(LayoutError::MissingStruct("net_device"))?;
    let member = |id, ty: &'static str, member: &'static str| {
        btf.member(id, member)
            .ok_or(LayoutError::MissingMember { ty, member })
    };
    let byte_member = |id, ty: &'static str, name: &'static str, size: u32| {
        let m = member(id, ty, name)?;
        if m.bitfield_size != 0 || m.bit_offset % 8 != 0 {
            return Err(LayoutError::Unexpected(name, "a bitfield"));
        }
        if btf.size_of(m.type_id) != Some(size) {
            return Err(LayoutError::Unexpected(name, "an unexpected size"));
        }
        Ok(m.bit_offset / 8)
    };

    let skb_dev = byte_member(skb, "sk_buff", "dev", 8)?;
    let summed = member(skb, "sk_buff", "ip_summed")?;
    let width = if summed.bitfield_size == 0 {
        8
    } else {
        summed.bitfield_size
    };
    if width > 8 || summed.bit_offset % 8 + width > 8 {
        return Err(LayoutError::Unexpected("ip_summed", "not within one byte"));
    }
    let dev_features = byte_member(dev, "net_device", "features", 8)?;
    // `possible_net_t nd_net` is `{ struct net *net; }`: 8 bytes, the
    // pointer first. The namespace cookie keys every per-interface map.
    let dev_nd_net = byte_member(dev, "net_device", "nd_net", 8)?;
    let net = btf.struct_id("net").ok_or(LayoutError::MissingStruct("net"))?;
    let net_cookie = byte_member(net, "net", "net_cookie", 8)?;
    let bit = |name: &'static str| -> Result<u64, LayoutError> {
        let value = btf.enum_value(name).ok_or(LayoutError::MissingEnum(name))?;
        if !(0..64).contains(&value) {
            return Err(LayoutError::Unexpected(name, "not a bit of a 64-bit mask"));
        }
        Ok(1 << value)
    };
    let csum_features = bit("NETIF_F_IP_CSUM_BIT")? | bit("NETIF_F_HW_CSUM_BIT")?;
    let csum6_features = bit("NETIF_F_IPV6_CSUM_BIT")? | bit("NETIF_F_HW_CSUM_BIT")?;

    let mut layout = KernelLayout {
        skb_dev,
        skb_ip_summed: summed.bit_offset / 8,
        ip_summed_shift: summed.bit_offset % 8,
        ip_summed_mask: (1u32 << width) - 1,
        dev_features,
        dev_nd_net,
        net_cookie,
        flags: LAYOUT_VALID,
        csum_features,
        csum6_features,
        ..Default::default()
    };
    // Optional: lets the classifier check where the kernel will finish the
    // checksum. Without them it trusts that a partial UDP packet's checksum
    // is the UDP check field, as it is for every packet the kernel builds.
    if let (Ok(head), Ok(data), Ok(start), Ok(offset)) = (
        byte_member(skb, "sk_buff", "head", 8),
        byte_member(skb, "sk_buff", "data", 8),
        byte_member(skb, "sk_buff", "csum_start", 2),
        byte_member(skb, "sk_buff", "csum_offset", 2),
    ) {
        layout.skb_head = head;
        layout.skb_data = data;
        layout.skb_csum_start = start;
        layout.skb_csum_offset = offset;
        layout.flags |= LAYOUT_HAS_CSUM_START;
    }
    Ok(layout)
}

/// Resolves the layout of the running kernel (or of `btf_path`).
pub fn resolve_from(btf_path: Option<&Path>) -> Result<KernelLayout, LayoutError> {
    let path = btf_path.unwrap_or(Path::new(VMLINUX_BTF));
    resolve(&Btf::from_file(path)?)
}

/// `NETIF_F_IP_CSUM` and `NETIF_F_HW_CSUM` (bits 1 and 3 of enum
/// netdev_features, unchanged since Linux 2.6), for when BTF is unavailable.
pub const FALLBACK_CSUM_FEATURES: u64 = (1 << 1) | (1 << 3);

/// The checksum feature bits the classifier tests, from the running
/// kernel's BTF, or the well-known bits when BTF is unavailable.
pub fn csum_feature_mask() -> u64 {
    resolve_from(None)
        .map(|l| l.csum_features)
        .unwrap_or(FALLBACK_CSUM_FEATURES)
}

/// An operator-supplied layout, for kernels without usable BTF:
/// `skb_dev=16,ip_summed=128:5,dev_features=184,nd_net=288,net_cookie=160,csum_bits=1+3`
/// (and optionally `csum6_bits=3+4` to fill IPv6 checksums too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutSpec(pub KernelLayout);

impl FromStr for LayoutSpec {
    type Err = LayoutError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LayoutError::BadSpec(s.to_owned());
        let num = |v: &str| v.trim().parse::<u32>().map_err(|_| bad());
        let bits = |v: &str| {
            v.split('+').try_fold(0u64, |mask, bit| match num(bit)? {
                bit if bit < 64 => Ok(mask | 1 << bit),
                _ => Err(bad()),
            })
        };
        let mut layout = KernelLayout {
            ip_summed_mask: 3,
            flags: LAYOUT_VALID,
            ..Default::default()
        };
        let mut seen = 0u8;
        for item in s.split(',') {
            let (key, value) = item.split_once('=').ok_or_else(bad)?;
            match key.trim() {
                "skb_dev" => (layout.skb_dev, seen) = (num(value)?, seen | 1),
                "ip_summed" => {
                    let (byte, shift) = value.split_once(':').ok_or_else(bad)?;
                    layout.skb_ip_summed = num(byte)?;
                    layout.ip_summed_shift = num(shift)?;
                    if layout.ip_summed_shift > 6 {
                        return Err(bad());
                    }
                    seen |= 2;
                }
                "dev_features" => (layout.dev_features, seen) = (num(value)?, seen | 4),
                "csum_bits" => (layout.csum_features, seen) = (bits(value)?, seen | 8),
                "nd_net" => (layout.dev_nd_net, seen) = (num(value)?, seen | 16),
                "net_cookie" => (layout.net_cookie, seen) = (num(value)?, seen | 32),
                "csum6_bits" => layout.csum6_features = bits(value)?,
                _ => return Err(bad()),
            }
        }
        if seen != 63 || layout.csum_features == 0 {
            return Err(bad());
        }
        Ok(Self(layout))
    }
}

impl fmt::Display for LayoutSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.0;
        let bits = |mask: u64| {
            (0..64)
                .filter(|b| mask & (1u64 << b) != 0)
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join("+")
        };
        write!(
            f,
            "skb_dev={},ip_summed={}:{},dev_features={},nd_net={},net_cookie={},csum_bits={}",
            l.skb_dev,
            l.skb_ip_summed,
            l.ip_summed_shift,
            l.dev_features,
            l.dev_nd_net,
            l.net_cookie,
            bits(l.csum_features)
        )?;
        if l.csum6_features != 0 {
            write!(f, ",csum6_bits={}", bits(l.csum6_features))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use dhcpfix_lab::kit::btf::{BtfWriter, Kind};

    use super::*;

    /// Builds a tiny BTF blob: int, pointer, sk_buff with an anonymous union
    /// holding `dev` and a bitfield `ip_summed`, net_device, an enum.
    pub(crate) fn sample_btf(with_features: bool) -> Vec<u8> {
        let mut w = BtfWriter::new();
        let mut s = |name: &str| w.name(name);
        let (
            n_u64,
            n_skb,
            n_dev,
            n_summed,
            n_ndev,
            n_feat,
            n_enum_ip,
            n_enum_hw,
            n_u16,
            n_cs,
            n_co,
            n_head,
            n_data,
            n_enum_ip6,
            n_nd_net,
            n_net,
            n_cookie,
        ) = (
            s("u64"),
            s("sk_buff"),
            s("dev"),
            s("ip_summed"),
            s("net_device"),
            s("features"),
            s("NETIF_F_IP_CSUM_BIT"),
            s("NETIF_F_HW_CSUM_BIT"),
            s("u16"),
            s("csum_start"),
            s("csum_offset"),
            s("head"),
            s("data"),
            s("NETIF_F_IPV6_CSUM_BIT"),
            s("nd_net"),
            s("net"),
            s("net_cookie"),
        );
        let mut ty = |name: u32, kind: Kind, flag: bool, vlen: u32, size: u32, extra: &[u32]| {
            w.ty(name, kind, flag, vlen, size, extra)
        };
        ty(n_u64, Kind::Int, false, 0, 8, &[64]); // 1
        ty(0, Kind::Ptr, false, 0, 5, &[]); // 2: pointer to net_device
                                            // 3: anonymous union { dev; } at bit 128 of sk_buff
        ty(0, Kind::Union, false, 1, 8, &[n_dev, 2, 0]);
        // 4: struct sk_buff { union @128; ip_summed:2 @1029; csum_start @ 1248; csum_offset @1264; head @1536; data @1600 }
        ty(
            n_skb,
            Kind::Struct,
            true,
            6,
            256,
            &[
                0,
                3,
                128,
                n_summed,
                6,
                (2 << 24) | 1029,
                n_cs,
                6,
                1248,
                n_co,
                6,
                1264,
                n_head,
                2,
                1536,
                n_data,
                2,
                1600,
            ],
        );
        // 5: struct net_device { features @ 184*8; nd_net @ 288*8 }
        if with_features {
            ty(
                n_ndev,
                Kind::Struct,
                false,
                2,
                512,
                &[n_feat, 1, 184 * 8, n_nd_net, 8, 288 * 8],
            );
        } else {
            ty(
                n_ndev,
                Kind::Struct,
                false,
                2,
                512,
                &[n_head, 1, 0, n_nd_net, 8, 288 * 8],
            );
        }
        ty(n_u16, Kind::Int, false, 0, 1, &[8]); // 6: u8 (used for ip_summed), name irrelevant
        ty(
            0,
            Kind::Enum,
            false,
            3,
            4,
            &[n_enum_ip, 1, n_enum_hw, 3, n_enum_ip6, 4],
        ); // 7
        ty(0, Kind::Ptr, false, 0, 9, &[]); // 8: possible_net_t's pointer to struct net
        ty(n_net, Kind::Struct, false, 1, 256, &[n_cookie, 1, 160 * 8]); // 9: struct net { net_cookie @ 160*8 }
        let _ = n_u16;
        w.finish()
    }

    #[test]
    fn resolves_sample_layout_through_anonymous_union() {
        let btf = Btf::parse(sample_btf(true)).unwrap();
        let l = resolve(&btf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.skb_dev, 16);
        assert_eq!(
            (l.skb_ip_summed, l.ip_summed_shift, l.ip_summed_mask),
            (128, 5, 3)
        );
        assert_eq!(l.dev_features, 184);
        assert_eq!((l.dev_nd_net, l.net_cookie), (288, 160));
        assert_eq!(l.csum_features, (1 << 1) | (1 << 3));
        assert_eq!(l.csum6_features, (1 << 3) | (1 << 4));
        assert_eq!(l.flags, LAYOUT_VALID);
    }

    #[test]
    fn missing_member_is_named() {
        let btf = Btf::parse(sample_btf(false)).unwrap();
        let err = resolve(&btf).unwrap_err().to_string();
        assert!(err.contains("net_device.features"), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for blob in [
            vec![],
            vec![0x9f, 0xeb],
            vec![0x9f, 0xeb, 1, 0, 255, 255, 255, 255],
            sample_btf(true)[..40].to_vec(),
        ] {
            assert!(Btf::parse(blob).is_err());
        }
    }

    #[test]
    fn running_kernel_resolves_when_btf_present() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: {VMLINUX_BTF} absent");
            return;
        }
        let l = resolve_from(None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.flags & LAYOUT_HAS_CSUM_START, LAYOUT_HAS_CSUM_START);
        assert_eq!(l.ip_summed_mask, 3);
        // Documented in shared/design/kernel-facts.md for this machine's 6.18.
        if std::fs::read_to_string("/proc/sys/kernel/osrelease").is_ok_and(|r| r.starts_with("6.18.")) {
            assert_eq!(
                (l.skb_dev, l.skb_ip_summed, l.ip_summed_shift, l.dev_features),
                (16, 128, 5, 184)
            );
        }
    }

    /// Found by the BTF fuzz target: nested member offsets that overflow
    /// 32 bits must make the member unresolvable, not panic or wrap.
    #[test]
    fn overflowing_nested_offsets_are_not_found() {
        let mut w = BtfWriter::new();
        let (dev, skb) = (w.name("dev"), w.name("sk_buff"));
        w.ty(0, Kind::Int, false, 0, 8, &[64]); // 1
        w.ty(0, Kind::Union, false, 1, 8, &[dev, 1, 0x100]); // 2: { dev @ 0x100 }
        w.ty(skb, Kind::Struct, false, 1, 8, &[0, 2, 0xffff_fff0]); // 3: sk_buff { union @ 2^32-16 }
        let btf = Btf::parse(w.finish()).unwrap();
        assert_eq!(btf.struct_id("sk_buff"), Some(3));
        assert_eq!(btf.member(3, "dev"), None);
    }

    #[test]
    fn layout_spec_round_trips() {
        let text = "skb_dev=16,ip_summed=128:5,dev_features=184,nd_net=288,net_cookie=160,csum_bits=1+3";
        let spec: LayoutSpec = text.parse().unwrap();
        assert_eq!(spec.0.csum_features, 0b1010);
        assert_eq!((spec.0.dev_nd_net, spec.0.net_cookie), (288, 160));
        assert_eq!(spec.to_string(), text);
        let with6: LayoutSpec = format!("{text},csum6_bits=3+4").parse().unwrap();
        assert_eq!(with6.0.csum6_features, 0b11000);
        assert_eq!(with6.to_string(), format!("{text},csum6_bits=3+4"));
        for bad in [
            "",
            "skb_dev=16",
            "skb_dev=x,ip_summed=1:1,dev_features=1,csum_bits=1",
            "skb_dev=1,ip_summed=1:7,dev_features=1,csum_bits=1",
            "skb_dev=16,ip_summed=128:5,dev_features=184,csum_bits=1+3",
        ] {
            assert!(bad.parse::<LayoutSpec>().is_err(), "{bad}");
        }
    }
}
