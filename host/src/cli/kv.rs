//! `host kv APP list|get|set|delete`: an app's key-value data through the
//! admin API (`/v1/apps/{name}/kv`), in the store `--store` names
//! (`default` unless given). Values are bytes: `get` prints them as they
//! are (with `--json`, as a UTF-8 string), `set` takes them from the
//! command line or a file (`@FILE`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde_json::Value;

use crate::cli::client::{Client, ServerArgs, print_json, report};

#[derive(Debug, Clone, Args)]
pub struct KvArgs {
    /// The app whose data to read or change.
    pub app: String,
    /// The store, one the app declares (`--kv` at deploy).
    #[arg(long, global = true, default_value = "default")]
    pub store: String,
    #[command(subcommand)]
    pub command: KvCommand,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KvCommand {
    /// List keys (a page at a time: pass the printed cursor to go on).
    List {
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Go on after this key (printed at the end of a page).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Print a key's value.
    Get { key: String },
    /// Set a key: VALUE as given, or `@FILE` for a file's bytes.
    Set { key: String, value: String },
    /// Delete a key (nothing if it is absent).
    Delete { key: String },
}

/// `/v1/apps/APP/kv/KEY`, the key percent-encoded.
fn key_path(app: &str, key: &str) -> String {
    format!(
        "/v1/apps/{app}/kv/{}",
        utf8_percent_encode(key, NON_ALPHANUMERIC)
    )
}

pub async fn run(args: KvArgs) -> Result<()> {
    let client = Client::new(&args.server)?;
    let store = [("store", args.store.as_str())];
    let app = args.app.as_str();
    match &args.command {
        KvCommand::List { prefix, cursor } => {
            let mut query = vec![("store", args.store.clone()), ("prefix", prefix.clone())];
            if let Some(cursor) = cursor {
                query.push(("cursor", cursor.clone()));
            }
            let request = client
                .request(Method::GET, &format!("/v1/apps/{app}/kv"))
                .query(&query);
            let body = client.send(request).await?;
            if args.server.json {
                return print_json(&body);
            }
            let mut out = std::io::stdout().lock();
            for key in body["keys"].as_array().into_iter().flatten() {
                writeln!(out, "{}", key.as_str().unwrap_or_default())?;
            }
            if let Some(cursor) = body["cursor"].as_str() {
                writeln!(out, "(more: --cursor {cursor:?})")?;
            }
            Ok(())
        }
        KvCommand::Get { key } => {
            let request = client
                .request(Method::GET, &key_path(app, key))
                .query(&store);
            let value = client.send_raw(request).await?;
            if args.server.json {
                let Ok(text) = String::from_utf8(value) else {
                    bail!("the value of {key:?} is not UTF-8; leave out --json to get its bytes");
                };
                return print_json(&serde_json::json!({ "key": key, "value": text }));
            }
            std::io::stdout().lock().write_all(&value)?;
            Ok(())
        }
        KvCommand::Set { key, value } => {
            let bytes = match value.strip_prefix('@') {
                Some(file) => std::fs::read(PathBuf::from(file))
                    .with_context(|| format!("failed to read {file}"))?,
                None => value.clone().into_bytes(),
            };
            let request = client
                .request(Method::PUT, &key_path(app, key))
                .query(&store)
                .body(bytes);
            let body = client.send(request).await?;
            report(&args.server, &body, |body: &Value| {
                format!("set {key} ({} bytes)", body["bytes"])
            })
        }
        KvCommand::Delete { key } => {
            let request = client
                .request(Method::DELETE, &key_path(app, key))
                .query(&store);
            let body = client.send(request).await?;
            report(&args.server, &body, |_| format!("deleted {key}"))
        }
    }
}
