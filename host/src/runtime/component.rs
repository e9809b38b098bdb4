//! Loading a component: check that the bytes are a WebAssembly component,
//! tell which `wasi:http` world it serves ([`World`]), check that every
//! import is one the host provides, then compile it once and pre-instantiate
//! it ([`Pre`]) so each request only instantiates.
//!
//! WASI 0.2 components export `wasi:http/incoming-handler@0.2.x` (the
//! `proxy` world); WASI 0.3 components export `wasi:http/handler@0.3.x` (the
//! `service` world) and run on an engine of their own (see
//! [`crate::runtime::engine`]). A component that does not fit the pooling allocator's
//! shape is refused with what it needs and the flag to raise ([`pool_misfit`]).

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

use crate::runtime::keyvalue;
use crate::runtime::state::HostState;

/// The export of a WASI 0.2 HTTP component (any 0.2.x version: imports and
/// exports up to the host's 0.2.12 link by semver).
const HANDLER_EXPORT_P2: &str = "wasi:http/incoming-handler@0.2.";
/// The export of a WASI 0.3 HTTP component.
const HANDLER_EXPORT_P3: &str = "wasi:http/handler@0.3.";

/// Which `wasi:http` world a component serves, and so which engine runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum World {
    /// `wasi:http/proxy` (WASI 0.2): exports `incoming-handler`.
    #[default]
    #[serde(rename = "wasi:http@0.2")]
    Http02,
    /// `wasi:http/service` (WASI 0.3): exports `handler`, uses the
    /// component-model async ABI.
    #[serde(rename = "wasi:http@0.3")]
    Http03,
}

impl World {
    pub fn is_default(&self) -> bool {
        *self == World::Http02
    }

    /// Read the world from a component's top-level exports, without
    /// compiling it. Bytes that are not a component, or that export neither
    /// handler, are answered as WASI 0.2: compiling them then says exactly
    /// what is wrong.
    pub fn of(bytes: &[u8]) -> World {
        use wasmparser::{Parser, Payload};
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(bytes) {
            let Ok(payload) = payload else {
                return World::Http02;
            };
            match payload {
                Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                Payload::End(_) => depth = depth.saturating_sub(1),
                Payload::ComponentExportSection(exports) if depth == 0 => {
                    for export in exports.into_iter().flatten() {
                        let name = export.name.name;
                        if name.starts_with(HANDLER_EXPORT_P3) {
                            return World::Http03;
                        }
                        if name.starts_with(HANDLER_EXPORT_P2) {
                            return World::Http02;
                        }
                    }
                }
                _ => {}
            }
        }
        World::Http02
    }
}

/// Bytes of initialised data a component's core modules place in linear
/// memory (their active data segments): the size of the memory image each
/// new instance starts from. An interpreter's heap is most of it
/// (componentize-py: 12 MiB), a compiled guest's a few KiB; the engine
/// picks how memory slots are reset by it (see [`crate::runtime::engine`]). Bytes
/// that do not parse count what was read before the error.
pub fn memory_image_bytes(bytes: &[u8]) -> u64 {
    use wasmparser::{DataKind, Parser, Payload};
    let mut total = 0u64;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(Payload::DataSection(section)) = payload else {
            if payload.is_err() {
                break;
            }
            continue;
        };
        for data in section.into_iter().flatten() {
            if matches!(data.kind, DataKind::Active { .. }) {
                total += data.data.len() as u64;
            }
        }
    }
    total
}

/// A compiled component, pre-instantiated against the host's linker: what
/// each request instantiates.
#[derive(Clone)]
pub enum Pre {
    P2(ProxyPre<HostState>),
    P3(ServicePre<HostState>),
}

impl Pre {
    pub fn engine(&self) -> &Engine {
        match self {
            Pre::P2(pre) => pre.engine(),
            Pre::P3(pre) => pre.instance_pre().engine(),
        }
    }
}

/// The linker every component of `world` is instantiated against: the WASI
/// CLI interfaces (so components built with std by any toolchain link),
/// wasi:http, wasi:config for per-app configuration and both versions of
/// wasi:keyvalue for per-app state. WASI 0.3
/// components get the 0.3 interfaces and the 0.2 ones (Rust's std still
/// imports WASI 0.2).
pub fn linker(engine: &Engine, world: World) -> Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("failed to add WASI interfaces to the linker")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("failed to add wasi:http interfaces to the linker")?;
    if world == World::Http03 {
        wasmtime_wasi::p3::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("failed to add WASI 0.3 interfaces to the linker")?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("failed to add wasi:http 0.3 interfaces to the linker")?;
    }
    wasmtime_wasi_config::add_to_linker(&mut linker, HostState::config)
        .map_err(anyhow::Error::from)
        .context("failed to add wasi:config to the linker")?;
    keyvalue::draft2::add_to_linker(&mut linker)
        .map_err(anyhow::Error::from)
        .context("failed to add wasi:keyvalue@0.2.0-draft2 to the linker")?;
    keyvalue::draft::add_to_linker(&mut linker)
        .map_err(anyhow::Error::from)
        .context("failed to add wasi:keyvalue@0.2.0-draft to the linker")?;
    Ok(linker)
}

/// Check that `bytes` are a component (not text, not a core module) and
/// compile them. CPU-heavy: call it off the serving threads.
pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component> {
    check_header(bytes)?;
    Component::new(engine, bytes).map_err(|err| {
        let err = anyhow::Error::from(err);
        match pool_misfit(&err) {
            Some(message) => err.context(message),
            None => err.context("failed to compile component"),
        }
    })
}

/// Check that a compiled component exports the handler of `world` and
/// imports only what the host provides, and pre-instantiate it.
pub fn prepare(
    engine: &Engine,
    linker: &Linker<HostState>,
    component: &Component,
    world: World,
) -> Result<Pre> {
    check_handler_export(engine, component, world)?;
    let pre = linker.instantiate_pre(component).map_err(|err| {
        anyhow!("{err}").context("the component imports something this host does not provide")
    })?;
    match world {
        World::Http02 => ProxyPre::new(pre).map(Pre::P2).map_err(|err| {
            anyhow!("{err}")
                .context("the component's `wasi:http/incoming-handler` export has the wrong shape")
        }),
        World::Http03 => ServicePre::new(pre).map(Pre::P3).map_err(|err| {
            anyhow!("{err}")
                .context("the component's `wasi:http/handler` export has the wrong shape")
        }),
    }
}

/// A key that changes whenever code compiled by this engine could not be
/// loaded by another: part of every precompiled cache file's name.
pub fn engine_key(engine: &Engine) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Tell "not wasm at all" and "a core module" apart from a component before
/// handing the bytes to the compiler, so the error says what to do.
fn check_header(bytes: &[u8]) -> Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        bail!("not a WebAssembly binary: the file does not start with the `\\0asm` header");
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => bail!(
            "this is a core WebAssembly module, not a component: build it for \
             `wasm32-wasip2`, or wrap it with `wasm-tools component new`"
        ),
        [_, _, 1, 0] => Ok(()),
        _ => bail!("unsupported WebAssembly binary version or layer"),
    }
}

fn check_handler_export(engine: &Engine, component: &Component, world: World) -> Result<()> {
    let wanted = match world {
        World::Http02 => HANDLER_EXPORT_P2,
        World::Http03 => HANDLER_EXPORT_P3,
    };
    let ty = component.component_type();
    let mut exports = Vec::new();
    for (name, item) in ty.exports(engine) {
        if name.starts_with(wanted) && matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            return Ok(());
        }
        exports.push(name.to_string());
    }
    let found = if exports.is_empty() {
        "it exports nothing".to_string()
    } else {
        format!("its exports are: {}", exports.join(", "))
    };
    bail!(
        "the component does not export `wasi:http/incoming-handler` (WASI 0.2) or \
         `wasi:http/handler` (WASI 0.3) ({found}); build it as an HTTP handler \
         (the `wasi:http/proxy` or `wasi:http/service` world)"
    )
}

/// The pooling allocator's refusals of a component (wasmtime reports them
/// as text), rewritten to say which host limit the component exceeds, what
/// it needs, and the flag that raises it.
pub fn pool_misfit(err: &anyhow::Error) -> Option<String> {
    let text = format!("{err:#}");
    // (what wasmtime says, the needed number comes right after it, what we
    // call it, the flag and the unit its value is in)
    const CASES: [(&str, &str, &str, u64); 5] = [
        (
            "The component transitively contains ",
            "core module instances",
            "--max-core-instances-per-component",
            1,
        ),
        (
            "The component transitively contains ",
            "Wasm linear memories",
            "--max-memories-per-component",
            1,
        ),
        (
            "The component transitively contains ",
            "tables",
            "--max-tables-per-component",
            1,
        ),
        (
            "instance allocation for this component requires ",
            "KiB of host-side instance state",
            "--max-component-instance-kib",
            1024,
        ),
        (
            "has a minimum element size of ",
            "table elements",
            "--max-table-elements",
            1,
        ),
    ];
    for (prefix, what, flag, unit) in CASES {
        let Some(at) = text.find(prefix) else {
            continue;
        };
        let rest = &text[at + prefix.len()..];
        let needed: u64 = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        // "…contains N <what>, which exceeds…": pick the case by its noun.
        if prefix.starts_with("The component")
            && !rest[needed.to_string().len()..]
                .trim_start()
                .starts_with(what)
        {
            continue;
        }
        let limit: u64 = rest
            .split("maximum of ")
            .nth(1)
            .or_else(|| rest.split("the limit of ").nth(1))?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let (needed_shown, limit_shown) = (needed.div_ceil(unit), limit / unit);
        return Some(format!(
            "the component needs {needed_shown} {what} but this host allows {limit_shown} per \
             component: raise {flag} to at least {needed_shown} (or build a smaller component)"
        ));
    }
    if let Some(at) = text.find("memory has a minimum byte size of ") {
        let needed: u64 = text[at + 34..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let mib = needed.div_ceil(1 << 20);
        return Some(format!(
            "the component's memory starts at {mib} MiB, more than an instance may grow to on \
             this host: raise --max-app-memory-mib to at least {mib} (and --memory-budget-mib, \
             if an app's share of it is lower)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn misfit(text: &str) -> String {
        pool_misfit(&anyhow!(text.to_string()).context("failed to compile component"))
            .unwrap_or_else(|| panic!("not recognised: {text}"))
    }

    #[test]
    fn pool_refusals_name_the_need_and_the_flag() {
        let m = misfit(
            "The component transitively contains 14 core module instances, which exceeds the \
             configured maximum of 8 in the pooling allocator",
        );
        assert!(m.contains("needs 14 core module instances"), "{m}");
        assert!(m.contains("allows 8"), "{m}");
        assert!(
            m.contains("--max-core-instances-per-component to at least 14"),
            "{m}"
        );

        let m = misfit(
            "The component transitively contains 3 Wasm linear memories, which exceeds the \
             configured maximum of 2 in the pooling allocator",
        );
        assert!(
            m.contains("--max-memories-per-component to at least 3"),
            "{m}"
        );

        let m = misfit(
            "The component transitively contains 9 tables, which exceeds the configured \
             maximum of 8 in the pooling allocator",
        );
        assert!(
            m.contains("--max-tables-per-component to at least 9"),
            "{m}"
        );

        let m = misfit(
            "instance allocation for this component requires 2500000 bytes of \
             `VMComponentContext` and aggregated core instance runtime space which exceeds the \
             configured maximum of 2097152 bytes. `VMComponentContext` used 100 bytes",
        );
        assert!(
            m.contains("--max-component-instance-kib to at least 2442"),
            "{m}"
        );
        assert!(m.contains("allows 2048"), "{m}");

        let m = misfit(
            "table index 0 has a minimum element size of 30000 which exceeds the limit of 20000",
        );
        assert!(m.contains("--max-table-elements to at least 30000"), "{m}");

        let m = misfit(
            "memory has a minimum byte size of 209715200 which exceeds the limit of 134217728 bytes",
        );
        assert!(m.contains("--max-app-memory-mib to at least 200"), "{m}");

        assert!(pool_misfit(&anyhow!("some other compile error")).is_none());
    }

    #[test]
    fn the_world_comes_from_the_top_level_exports() {
        // Not a component, or no handler: WASI 0.2 (compiling says why).
        assert_eq!(World::of(b"not wasm"), World::Http02);
        assert_eq!(World::of(b"\0asm\x01\0\0\0"), World::Http02);
    }

    #[test]
    fn the_memory_image_counts_active_data_only() {
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        // One memory of one page.
        module.extend([5, 3, 1, 0, 1]);
        // Three segments: active with 3 bytes, passive with 2 (not part of
        // the image), active at memory 0 explicitly with 4.
        let data: &[u8] = &[
            3, // count
            0, 0x41, 8, 0x0b, 3, b'a', b'b', b'c', // active, i32.const 8
            1, 2, b'x', b'y', // passive
            2, 0, 0x41, 0, 0x0b, 4, 1, 2, 3, 4, // active, memory 0
        ];
        module.push(11);
        module.push(data.len() as u8);
        module.extend(data);
        assert_eq!(memory_image_bytes(&module), 7);
        assert_eq!(memory_image_bytes(b"not wasm"), 0);
        // What was read before a parse error still counts.
        let mut truncated = module.clone();
        truncated.extend([0, 9, 9]);
        assert_eq!(memory_image_bytes(&truncated), 7);
    }
}
