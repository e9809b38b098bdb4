//! Example guest: answers `GET /?config=a,b&secret=NAME` with
//!
//! ```json
//! {"env": {...every env var...},
//!  "config": {"a": "value or null", "b": ...},
//!  "secret": {"name": "NAME", "set": true}}
//! ```
//!
//! Configuration and secrets come from `wasi:config/store`, env vars from
//! `wasi:cli/environment`. A secret's value is never printed, only whether
//! it is set.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::json::{Object, string};
use guest_sdk::wasi::config::store;
use guest_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};
use guest_sdk::{query_param, respond};

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let mut env = Object::new();
        for (key, value) in std::env::vars() {
            env.field(&key, &string(&value));
        }
        let mut config = Object::new();
        for key in query_param(&request, "config")
            .unwrap_or_default()
            .split(',')
            .filter(|k| !k.is_empty())
        {
            let value = match store::get(key) {
                Ok(Some(value)) => string(&value),
                Ok(None) => "null".to_string(),
                Err(err) => string(&format!("error: {err:?}")),
            };
            config.field(key, &value);
        }
        let mut body = Object::new();
        body.field("env", &env.finish());
        body.field("config", &config.finish());
        if let Some(name) = query_param(&request, "secret") {
            let set = matches!(store::get(&name), Ok(Some(_)));
            let mut secret = Object::new();
            secret.field("name", &string(&name));
            secret.field("set", if set { "true" } else { "false" });
            body.field("secret", &secret.finish());
        }
        respond(out, 200, "application/json", body.finish().as_bytes());
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
