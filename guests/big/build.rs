//! Generates `FUNCTIONS` distinct functions, all reachable through one
//! table, so the component carries several MB of code that a deploy must
//! compile: a stand-in for a large real-world app in cold-start benchmarks.

use std::fmt::Write;

const FUNCTIONS: u64 = 3000;
const ARMS: u64 = 24;

fn main() {
    let mut code = String::new();
    for f in 0..FUNCTIONS {
        let _ = writeln!(code, "#[inline(never)] fn f{f}(x: u64) -> u64 {{");
        let _ = writeln!(code, "    let mut h = x ^ {:#x};", mix(f, 0));
        let _ = writeln!(code, "    match x % {ARMS} {{");
        for a in 0..ARMS {
            let _ = writeln!(
                code,
                "        {a} => {{ h = h.rotate_left({}).wrapping_mul({:#x}) ^ {:#x}; if h.is_multiple_of({}) {{ h = h.wrapping_add({:#x}) }} }}",
                (f + a) % 63 + 1,
                mix(f, a) | 1,
                mix(a, f),
                (mix(f, a + 7) % 97) + 2,
                mix(f + 11, a),
            );
        }
        let _ = writeln!(code, "        _ => h = h.wrapping_sub({:#x}),", mix(f, 99));
        let _ = writeln!(code, "    }}\n    h\n}}");
    }
    let _ = writeln!(code, "pub static TABLE: [fn(u64) -> u64; {FUNCTIONS}] = [");
    for f in 0..FUNCTIONS {
        let _ = write!(code, "f{f}, ");
    }
    let _ = writeln!(code, "];");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("generated.rs"), code).expect("write generated.rs");
    println!("cargo::rerun-if-changed=build.rs");
}

/// A cheap deterministic mix, so every constant differs.
fn mix(a: u64, b: u64) -> u64 {
    let mut h =
        (a + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (b + 1).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    h ^= h >> 29;
    h.wrapping_mul(0x1656_67b1_9e37_79f9)
}
