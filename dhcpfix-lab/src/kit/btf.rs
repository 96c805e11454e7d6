//! Writing BTF blobs by hand, for sample kernels in tests and fuzz seeds.

/// The BTF kinds (`BTF_KIND_*` in linux/btf.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    Int = 1,
    Ptr = 2,
    Array = 3,
    Struct = 4,
    Union = 5,
    Enum = 6,
    Fwd = 7,
    Typedef = 8,
    Volatile = 9,
    Const = 10,
    Restrict = 11,
    Func = 12,
    FuncProto = 13,
    Var = 14,
    Datasec = 15,
    Float = 16,
    DeclTag = 17,
    TypeTag = 18,
    Enum64 = 19,
}

/// A BTF blob being written: a string table and type records; type ids
/// count from 1 in the order of [`BtfWriter::ty`] calls.
#[derive(Clone, Debug)]
pub struct BtfWriter {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Default for BtfWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BtfWriter {
    /// An empty blob: no types, the string table holding only "".
    pub fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
        }
    }

    /// Adds `name` to the string table; returns its offset.
    pub fn name(&mut self, name: &str) -> u32 {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    /// Appends a `struct btf_type` (name offset; info = kind flag, kind,
    /// vlen; size or type) and the words that follow it (members, enum
    /// values, array or int data).
    pub fn ty(
        &mut self,
        name: u32,
        kind: Kind,
        kind_flag: bool,
        vlen: u32,
        size_or_type: u32,
        extra: &[u32],
    ) {
        let info = (u32::from(kind_flag) << 31) | ((kind as u32) << 24) | vlen;
        for word in [name, info, size_or_type].iter().chain(extra) {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
    }

    /// The blob: the 24-byte header (magic 0xeb9f, version 1), the type
    /// section, then the string section.
    pub fn finish(self) -> Vec<u8> {
        let (types_len, strings_len) = (self.types.len() as u32, self.strings.len() as u32);
        let mut blob = Vec::with_capacity(24 + self.types.len() + self.strings.len());
        blob.extend_from_slice(&0xeb9fu16.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, types_len, types_len, strings_len] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        blob.extend_from_slice(&self.types);
        blob.extend_from_slice(&self.strings);
        blob
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_then_types_then_strings() {
        let mut w = BtfWriter::new();
        let n = w.name("u8");
        w.ty(n, Kind::Int, false, 0, 1, &[8]);
        let blob = w.finish();
        assert_eq!(&blob[..4], &[0x9f, 0xeb, 1, 0]);
        // hdr_len 24, type_off 0, type_len 16, str_off 16, str_len 4.
        let word = |i: usize| u32::from_le_bytes(blob[4 + 4 * i..8 + 4 * i].try_into().unwrap());
        assert_eq!((0..5).map(word).collect::<Vec<_>>(), [24, 0, 16, 16, 4]);
        assert_eq!(u32::from_le_bytes(blob[28..32].try_into().unwrap()), 1 << 24);
        assert_eq!(&blob[40..], b"\0u8\0");
    }
}
