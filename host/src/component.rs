//! Loading a component: check that the bytes are a WebAssembly component,
//! that it exports `wasi:http/incoming-handler`, and that every import is one
//! the host provides; then compile it once and pre-instantiate it into a
//! [`ProxyPre`] that each request instantiates from.

use anyhow::{Context, Result, anyhow, bail};
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::state::HostState;

/// The export every servable component must have (any WASI 0.2.x version).
const HANDLER_EXPORT: &str = "wasi:http/incoming-handler@0.2.";

/// The linker every component is instantiated against: the WASI CLI
/// interfaces (so components built with std by any toolchain link),
/// wasi:http, and wasi:config for per-app configuration.
pub fn linker(engine: &Engine) -> Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("failed to add WASI interfaces to the linker")?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("failed to add wasi:http interfaces to the linker")?;
    wasmtime_wasi_config::add_to_linker(&mut linker, HostState::config)
        .map_err(anyhow::Error::from)
        .context("failed to add wasi:config to the linker")?;
    Ok(linker)
}

/// Check that `bytes` are a component (not text, not a core module) and
/// compile them. CPU-heavy: call it off the serving threads.
pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<Component> {
    check_header(bytes)?;
    Component::new(engine, bytes)
        .map_err(anyhow::Error::from)
        .context("failed to compile component")
}

/// Check that a compiled component exports `wasi:http/incoming-handler` and
/// imports only what the host provides, and pre-instantiate it.
pub fn prepare(
    engine: &Engine,
    linker: &Linker<HostState>,
    component: &Component,
) -> Result<ProxyPre<HostState>> {
    check_handler_export(engine, component)?;
    let pre = linker.instantiate_pre(component).map_err(|err| {
        anyhow!("{err}").context("the component imports something this host does not provide")
    })?;
    ProxyPre::new(pre).map_err(|err| {
        anyhow!("{err}")
            .context("the component's `wasi:http/incoming-handler` export has the wrong shape")
    })
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

fn check_handler_export(engine: &Engine, component: &Component) -> Result<()> {
    let ty = component.component_type();
    let mut exports = Vec::new();
    for (name, item) in ty.exports(engine) {
        if name.starts_with(HANDLER_EXPORT)
            && matches!(item.ty, ComponentItem::ComponentInstance(_))
        {
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
        "the component does not export `wasi:http/incoming-handler` ({found}); \
         build it as an HTTP handler (the `wasi:http/proxy` world)"
    )
}
