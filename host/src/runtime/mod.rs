//! Everything that touches wasmtime: the engines and their epoch ticker
//! ([`engine`]), loading a component ([`component`]), a served version and
//! its admission ([`served`]), making and running its instances
//! ([`instance`]; the call by world: [`p2`], [`p3`], and [`shared`] WASI
//! 0.3 instances), how a guest's failure becomes a status ([`failure`]),
//! what lives in a store ([`state`]), the guest's limits ([`limits`]),
//! output ([`output`]), outbound HTTP ([`outbound`]) and key-value state
//! ([`keyvalue`], on [`crate::kv`]).

pub mod component;
pub mod engine;
pub mod failure;
pub mod instance;
pub mod keyvalue;
pub mod limits;
pub mod outbound;
pub mod output;
pub mod p2;
pub mod p3;
pub mod served;
pub mod shared;
pub mod state;
