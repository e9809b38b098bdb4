//! Another version of a component: the same code with one custom section
//! appended, so it has another digest (compiled and cached on its own). The
//! e2e and in-process tests deploy such variants as new versions; the bench
//! deploys many distinct apps with them.

/// `wasm` plus a custom section naming `i`: the same app, another digest,
/// so every copy is compiled and cached on its own.
pub fn variant(wasm: &[u8], i: usize) -> Vec<u8> {
    let name = b"bench-variant";
    let mut payload = leb128(name.len());
    payload.extend_from_slice(name);
    payload.extend_from_slice(i.to_string().as_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    out.extend(leb128(payload.len()));
    out.extend(payload);
    out
}

/// Unsigned LEB128, as wasm encodes sizes.
fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        out.push(byte | if n != 0 { 0x80 } else { 0 });
        if n == 0 {
            return out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_encodes_sizes_as_wasm_does() {
        assert_eq!(leb128(0), [0]);
        assert_eq!(leb128(127), [0x7f]);
        assert_eq!(leb128(128), [0x80, 0x01]);
        assert_eq!(leb128(624_485), [0xe5, 0x8e, 0x26]);
    }

    #[test]
    fn a_variant_appends_one_custom_section() {
        let wasm = b"\0asm\x0d\0\x01\0";
        let out = variant(wasm, 42);
        let (head, section) = out.split_at(wasm.len());
        assert_eq!(head, wasm);
        // id 0, size, name length, name, then the payload `42`.
        let mut want = vec![0, 16, 13];
        want.extend_from_slice(b"bench-variant42");
        assert_eq!(section, want);
        assert_ne!(variant(wasm, 1), variant(wasm, 2));
    }
}
