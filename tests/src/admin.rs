//! Talking to a running host: its admin API over HTTP (deploy, any call,
//! `/metrics` and a metric's value in it) and the binary's client
//! subcommands pointed at it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::Host;

/// An HTTP client for tests: no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// What a client subcommand printed.
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The value of metric `name` whose labels include all of `labels`, summed
/// over matching series (0 when absent), from `/metrics` text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// Send an admin API request, with `token` as its bearer when given:
/// `(status, JSON body)` (null when the body is not JSON).
async fn call(
    mut request: reqwest::RequestBuilder,
    token: Option<&str>,
    what: &str,
) -> (u16, serde_json::Value) {
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect(what);
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

impl Host {
    /// Run a client subcommand (`deploy`, `apps`, …) of the binary this
    /// host runs against this host.
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .args(["--server", &self.admin_url("")])
            .env_remove("HOST_ADMIN_TOKEN")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let output = cmd.output().expect("failed to run the host client");
        CliOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Deploy through the admin API: `(status, JSON body)`.
    pub async fn deploy(
        &self,
        name: &str,
        wasm: Vec<u8>,
        settings: serde_json::Value,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let form = reqwest::multipart::Form::new()
            .part(
                "component",
                reqwest::multipart::Part::bytes(wasm).file_name("app.wasm"),
            )
            .part(
                "settings",
                reqwest::multipart::Part::text(settings.to_string()),
            );
        let request = client()
            .post(self.admin_url(&format!("/v1/apps/{name}/versions")))
            .multipart(form);
        call(request, token, "deploy request").await
    }

    /// An admin API call: `(status, JSON body)`.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = client().request(method, self.admin_url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        call(request, token, "admin request").await
    }

    /// Wait (at most 20 s) until metric `name` with `labels` satisfies
    /// `want`; its last value. Instances end on their own tasks a moment
    /// after their response, so gauges are read with a bound, not once.
    pub async fn metric_until(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let value = metric(&self.metrics().await, name, labels);
            if want(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} stayed at {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The host's `/readyz`: its status and body.
    pub async fn readyz(&self) -> (u16, String) {
        let response = client()
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .expect("readyz request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("readyz body"))
    }

    /// The host's `/metrics` text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }
}
