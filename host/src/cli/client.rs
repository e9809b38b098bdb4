//! The client side of the binary: `host deploy`, `apps`, `rollback`,
//! `canary` and `remove` talk to a running host's admin API. Human output
//! by default, `--json` for scripts; a server error is printed as the
//! server's message with a non-zero exit.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use reqwest::Method;
use serde_json::Value;

use crate::apps::secrets::SecretSource;
use crate::apps::settings::parse_pair;

/// Where the admin API is and how to talk to it.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The admin API of the host to talk to. Token: $HOST_ADMIN_TOKEN.
    #[arg(
        long,
        global = true,
        env = "HOST_SERVER",
        default_value = "http://127.0.0.1:8081"
    )]
    pub server: String,
    /// Print the server's JSON answer instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// The component (.wasm) to deploy.
    pub file: PathBuf,
    /// App name: lowercase letters, digits and `-`.
    #[arg(long)]
    pub name: String,
    /// Path prefix the app answers under (required on its first deploy).
    #[arg(long)]
    pub route: Option<String>,
    /// Only answer requests for this host name.
    #[arg(long)]
    pub host: Option<String>,
    /// Environment variable for the app, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// wasi:config value for the app, KEY=VALUE (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Secret KEY read by the host from its environment variable ENVVAR
    /// (or `file:/path`); the app reads it through wasi:config (repeatable).
    #[arg(long = "secret", value_name = "KEY=ENVVAR")]
    pub secret: Vec<String>,
    /// Outbound HTTP the app may make: scheme://host[:port], `*.` for subdomains (repeatable).
    #[arg(long = "allow-outbound", value_name = "PATTERN")]
    pub allow_outbound: Vec<String>,
    /// A key-value store the app may open through wasi:keyvalue, in its own
    /// namespace (repeatable; `default` is what `open("")` opens).
    #[arg(long = "kv", value_name = "STORE")]
    pub kv: Vec<String>,
    #[arg(long)]
    pub memory_mib: Option<u64>,
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    /// Requests one instance may serve before it is dropped (1: a fresh
    /// instance per request). Only for apps that keep no state between
    /// requests: memory and globals carry over from one to the next.
    #[arg(long)]
    pub instance_reuse: Option<u32>,
    /// Requests one instance may serve at once (WASI 0.3 components, with
    /// --instance-reuse above 1).
    #[arg(long)]
    pub instance_concurrency: Option<u32>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Waiting until every replica of a cluster serves a change.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// In cluster mode, return only once every live replica serves the
    /// change (or fail naming the ones that do not, and why).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS", requires = "wait")]
    pub wait_timeout: u64,
}

#[derive(Debug, Clone, Args)]
pub struct AppsArgs {
    /// Show only this app, with its versions.
    pub name: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    pub name: String,
    /// The version to make current (default: the one before the current).
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CanaryArgs {
    pub name: String,
    /// The version that gets `--weight` percent of requests.
    #[arg(long, required_unless_present_any = ["promote", "abort"])]
    pub version: Option<String>,
    /// Percent of requests (0-100) for `--version`.
    #[arg(long, required_unless_present_any = ["promote", "abort"])]
    pub weight: Option<u8>,
    /// Keep each client on one side (by `x-canary-key` header or `canary-key` cookie).
    #[arg(long)]
    pub sticky: bool,
    /// Make the canary version current.
    #[arg(long, conflicts_with_all = ["version", "weight", "abort"])]
    pub promote: bool,
    /// Stop the canary.
    #[arg(long, conflicts_with_all = ["version", "weight", "promote"])]
    pub abort: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RemoveArgs {
    pub name: String,
    /// Keep the app's key-value data (by default it is deleted with the
    /// app; an app deployed later under the same name sees kept data).
    #[arg(long)]
    pub keep_data: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(server: &ServerArgs) -> Result<Client> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("failed to build the HTTP client")?;
        Ok(Client {
            http,
            base: server.server.trim_end_matches('/').to_string(),
            token: std::env::var("HOST_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        })
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Send and decode; a non-2xx becomes an error carrying the server's message.
    pub(crate) async fn send(&self, builder: reqwest::RequestBuilder) -> Result<Value> {
        let body = self.send_raw(builder).await?;
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Send and return the body as it came; a non-2xx becomes an error
    /// carrying the server's message.
    pub(crate) async fn send_raw(&self, builder: reqwest::RequestBuilder) -> Result<Vec<u8>> {
        let response = builder
            .send()
            .await
            .with_context(|| format!("cannot reach the host's admin API at {}", self.base))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("the admin API at {} stopped answering", self.base))?;
        if !status.is_success() {
            let error: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let message = error["error"].as_str().unwrap_or("no message");
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(body.to_vec())
    }
}

/// `host apps`: List the apps, or show one.
pub async fn apps(args: AppsArgs) -> Result<()> {
    let client = Client::new(&args.server)?;
    let path = match &args.name {
        Some(name) => format!("/v1/apps/{name}"),
        None => "/v1/apps".to_string(),
    };
    let body = client.send(client.request(Method::GET, &path)).await?;
    if args.server.json {
        return print_json(&body);
    }
    match args.name {
        Some(_) => print_app(&body, true),
        None => {
            let apps = body["apps"].as_array().cloned().unwrap_or_default();
            if apps.is_empty() {
                writeln!(std::io::stdout(), "no apps")?;
            }
            for app in &apps {
                print_app(app, false)?;
            }
            Ok(())
        }
    }
}

/// `host rollback`: Roll an app back.
pub async fn rollback(args: RollbackArgs) -> Result<()> {
    let client = Client::new(&args.server)?;
    let body = serde_json::json!({ "version": args.to });
    let path = format!("/v1/apps/{}/rollback", args.name);
    let app = client
        .send(client.request(Method::POST, &path).json(&body))
        .await?;
    report(&args.server, &app, |app| {
        format!(
            "{} rolled back: version {} is current",
            app["name"].as_str().unwrap_or("?"),
            app["current_version"].as_str().unwrap_or("?")
        )
    })?;
    wait_for(&client, &args.wait, &app).await
}

/// `host canary`: Start, promote or abort a canary.
pub async fn canary(args: CanaryArgs) -> Result<()> {
    let client = Client::new(&args.server)?;
    let base = format!("/v1/apps/{}/canary", args.name);
    let request = if args.promote {
        client.request(Method::POST, &format!("{base}/promote"))
    } else if args.abort {
        client.request(Method::DELETE, &base)
    } else {
        client.request(Method::PUT, &base).json(&serde_json::json!({
            "version": args.version,
            "weight": args.weight,
            "sticky": args.sticky,
        }))
    };
    let app = client.send(request).await?;
    report(&args.server, &app, |app| {
        let name = app["name"].as_str().unwrap_or("?");
        let current = app["current_version"].as_str().unwrap_or("?");
        match app["canary"].as_object() {
            Some(c) => format!(
                "{name}: {}% of requests go to {}, the rest to {current}",
                c["weight"],
                c["version"].as_str().unwrap_or("?")
            ),
            None => format!("{name}: no canary; version {current} serves all requests"),
        }
    })?;
    wait_for(&client, &args.wait, &app).await
}

/// `host remove`: Delete an app, and its key-value data unless
/// `--keep-data`.
pub async fn remove(args: RemoveArgs) -> Result<()> {
    let client = Client::new(&args.server)?;
    let request = client
        .request(Method::DELETE, &format!("/v1/apps/{}", args.name))
        .query(&[("keep_data", args.keep_data)]);
    let body = client.send(request).await?;
    report(&args.server, &body, |body| {
        let data = &body["kv_data"];
        if data["deleted"].as_bool() == Some(true) {
            format!(
                "{} removed with its key-value data ({} keys, {} bytes); --keep-data keeps it",
                args.name, data["keys"], data["bytes"]
            )
        } else {
            format!("{} removed; its key-value data is kept", args.name)
        }
    })
}

/// `host deploy`: upload a component as a new version of an app.
pub async fn deploy(args: DeployArgs) -> Result<()> {
    let wasm = tokio::fs::read(&args.file)
        .await
        .with_context(|| format!("failed to read {}", args.file.display()))?;
    let pairs = |list: &[String]| -> Result<serde_json::Map<String, Value>> {
        list.iter()
            .map(|p| parse_pair(p).map(|(k, v)| (k, Value::String(v))))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::from)
    };
    let mut secrets = serde_json::Map::new();
    for pair in &args.secret {
        let (key, source) = parse_pair(pair)?;
        SecretSource::parse(&source)?;
        secrets.insert(key, Value::String(source));
    }
    let mut settings = serde_json::json!({
        "env": pairs(&args.env)?,
        "config": pairs(&args.config)?,
        "secrets": secrets,
        "allow_outbound": args.allow_outbound,
        "key_value": args.kv,
    });
    for (key, value) in [
        ("route", args.route.clone().map(Value::from)),
        ("host", args.host.clone().map(Value::from)),
        ("memory_mib", args.memory_mib.map(Value::from)),
        ("timeout_ms", args.timeout_ms.map(Value::from)),
        ("max_concurrent", args.max_concurrent.map(Value::from)),
        ("instance_reuse", args.instance_reuse.map(Value::from)),
        (
            "instance_concurrency",
            args.instance_concurrency.map(Value::from),
        ),
    ] {
        if let Some(value) = value {
            settings[key] = value;
        }
    }
    let file_name = args.file.file_name().map_or("component.wasm".into(), |n| {
        n.to_string_lossy().into_owned()
    });
    let form = reqwest::multipart::Form::new()
        .part(
            "component",
            reqwest::multipart::Part::bytes(wasm)
                .file_name(file_name)
                .mime_str("application/wasm")?,
        )
        .part(
            "settings",
            reqwest::multipart::Part::text(settings.to_string()).mime_str("application/json")?,
        );
    let client = Client::new(&args.server)?;
    let path = format!("/v1/apps/{}/versions", args.name);
    let app = client
        .send(client.request(Method::POST, &path).multipart(form))
        .await?;
    report(&args.server, &app, |app| {
        format!(
            "deployed {} version {}\nserving at {}",
            app["name"].as_str().unwrap_or("?"),
            app["current_version"].as_str().unwrap_or("?"),
            app["url"].as_str().unwrap_or("?")
        )
    })?;
    wait_for(&client, &args.wait, &app).await
}

/// With `--wait`, in cluster mode: poll the app until every live replica
/// serves `app`'s revision (or a newer one); fail if one cannot, or at the
/// timeout, naming the replicas that do not. A standalone host serves a
/// change once it answers, so there is nothing to wait for.
async fn wait_for(client: &Client, wait: &WaitArgs, app: &Value) -> Result<()> {
    let Some(revision) = app["revision"].as_u64().filter(|_| wait.wait) else {
        return Ok(());
    };
    let name = app["name"].as_str().unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait.wait_timeout);
    // A replica that cannot serve the revision tries again by itself (a
    // route another app's change frees, a compile that timed out under
    // load): a failure counts once it has lasted this long.
    let persistent = std::time::Duration::from_secs(10);
    let mut failing_since: std::collections::HashMap<String, std::time::Instant> =
        std::collections::HashMap::new();
    loop {
        // Through a load balancer a poll may reach a replica that has not
        // got the app yet (404), or one that is stopping: asked again.
        let now = match client
            .send(client.request(Method::GET, &format!("/v1/apps/{name}")))
            .await
        {
            Ok(now) => now,
            // A refusal (a token, a name) will not change by asking again.
            Err(err)
                if ["(HTTP 400)", "(HTTP 401)", "(HTTP 403)"]
                    .iter()
                    .any(|code| err.to_string().ends_with(code)) =>
            {
                return Err(err);
            }
            Err(err) if std::time::Instant::now() >= deadline => {
                bail!(
                    "timed out after {} s waiting for every replica to serve revision {revision} of {name}: {err:#}",
                    wait.wait_timeout
                )
            }
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let replicas = now["replicas"].as_array().cloned().unwrap_or_default();
        let behind: Vec<&Value> = replicas
            .iter()
            .filter(|r| r["revision"].as_u64().unwrap_or(0) < revision)
            .collect();
        let failing: Vec<&&Value> = behind
            .iter()
            .filter(|r| {
                r["failed"]["revision"]
                    .as_u64()
                    .is_some_and(|f| f >= revision)
            })
            .collect();
        failing_since.retain(|id, _| failing.iter().any(|r| r["replica"] == id.as_str()));
        for r in &failing {
            let id = r["replica"].as_str().unwrap_or("?").to_string();
            failing_since
                .entry(id)
                .or_insert_with(std::time::Instant::now);
        }
        if let Some(failed) = failing.iter().find(|r| {
            failing_since
                .get(r["replica"].as_str().unwrap_or("?"))
                .is_some_and(|since| since.elapsed() >= persistent)
                || std::time::Instant::now() >= deadline
        }) {
            bail!(
                "replica {} cannot serve revision {revision} of {name}: {}",
                failed["replica"].as_str().unwrap_or("?"),
                failed["failed"]["reason"]
                    .as_str()
                    .unwrap_or("no reason given")
            );
        }
        if behind.is_empty() && !replicas.is_empty() {
            eprintln!(
                "{name} revision {revision} is served by all {} replica(s)",
                replicas.len()
            );
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            let shown: Vec<String> = behind
                .iter()
                .map(|r| {
                    format!(
                        "{} (at revision {})",
                        r["replica"].as_str().unwrap_or("?"),
                        r["revision"]
                    )
                })
                .collect();
            bail!(
                "timed out after {} s waiting for every replica to serve revision {revision} of {name}; not yet: {}",
                wait.wait_timeout,
                if shown.is_empty() {
                    "no live replica was listed (is the cluster store reachable?)".to_string()
                } else {
                    shown.join(", ")
                }
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub(crate) fn report(
    server: &ServerArgs,
    body: &Value,
    human: impl Fn(&Value) -> String,
) -> Result<()> {
    if server.json {
        print_json(body)
    } else {
        writeln!(std::io::stdout(), "{}", human(body))?;
        Ok(())
    }
}

/// Output goes through `writeln!`, never `println!`: a closed pipe (`host
/// apps | head -1`) is an error `main` ends on quietly, not a panic.
pub(crate) fn print_json(body: &Value) -> Result<()> {
    writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(body)?)?;
    Ok(())
}

fn print_app(app: &Value, detailed: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let canary = match app["canary"].as_object() {
        Some(c) => format!("  canary {} at {}%", s(&c["version"]), c["weight"]),
        None => String::new(),
    };
    let failed = match app["failed"].as_str() {
        Some(reason) => format!("  NOT SERVED: {reason}"),
        None => String::new(),
    };
    let replicas = app["replicas"].as_array().cloned().unwrap_or_default();
    let cluster = match app["revision"].as_u64() {
        Some(revision) if app["replicas"].is_null() => {
            format!("  revision {revision} (replicas unknown: the cluster store cannot be read)")
        }
        Some(revision) => {
            let serving = replicas
                .iter()
                .filter(|r| r["revision"].as_u64() == Some(revision))
                .count();
            format!(
                "  revision {revision} ({serving}/{} replicas)",
                replicas.len()
            )
        }
        None => String::new(),
    };
    writeln!(
        out,
        "{:<20} {:<8} {:<14} {}{canary}{cluster}{failed}",
        s(&app["name"]),
        s(&app["source"]),
        s(&app["current_version"]),
        s(&app["url"])
    )?;
    if detailed {
        for r in &replicas {
            let failed = match r["failed"].as_object() {
                Some(f) => format!(
                    "  cannot serve revision {}: {}",
                    f["revision"],
                    s(&f["reason"])
                ),
                None => String::new(),
            };
            writeln!(
                out,
                "  replica {:<30} revision {}{failed}",
                s(&r["replica"]),
                r["revision"]
            )?;
        }
        for v in app["versions"].as_array().into_iter().flatten() {
            let mark = if v["current"].as_bool() == Some(true) {
                "*"
            } else {
                " "
            };
            writeln!(
                out,
                "  {mark} {}  {} bytes  deployed {}",
                s(&v["version"]),
                v["size"],
                v["deployed_at"]
            )?;
        }
    }
    Ok(())
}
