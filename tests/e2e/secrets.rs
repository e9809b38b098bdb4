//! Secrets come only from what the operator allows: files from
//! `--secrets-dir` (regular files, no escape by `..` or symlink, bounded in
//! size, never a FIFO or device), environment variables only under
//! `--secret-env-prefix`. Anything else is a 400 naming the rule, answered
//! at once, and the host keeps serving.

use serde_json::json;

use crate::harness::{Host, TempDir, client, wasm};

const FILE_SECRET: &str = "pw-from-the-secrets-dir";

async fn secret_is_set(host: &Host, path: &str, name: &str) -> bool {
    let body: serde_json::Value = client()
        .get(host.url(&format!("{path}?secret={name}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["secret"]["set"] == true
}

#[tokio::test]
async fn secrets_come_only_from_the_secrets_dir_and_allowed_variables() {
    let dir = TempDir::new("secrets-dir");
    dir.write("db-password", format!("{FILE_SECRET}\n").as_bytes());
    std::fs::create_dir(dir.0.join("team")).unwrap();
    dir.write("team/token", b"team-token");
    dir.write("big", &vec![b'x'; 100 * 1024]);
    let fifo = std::ffi::CString::new(dir.0.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    for (link, target) in [
        ("zero", "/dev/zero"),
        ("environ", "/proc/self/environ"),
        ("escape", "/etc/hostname"),
        ("inside", "db-password"),
    ] {
        std::os::unix::fs::symlink(target, dir.0.join(link)).unwrap();
    }
    let dir_arg = dir.0.to_str().unwrap().to_string();
    let state = TempDir::new("secrets-state");
    let host = Host::start_in(
        &state.0,
        &[
            "--no-default-app",
            "--secrets-dir",
            &dir_arg,
            "--secret-env-prefix",
            "E2E_OK_",
        ],
        &[("E2E_OK_TOKEN", "ok-token"), ("E2E_OTHER", "not-for-apps")],
    );

    let (status, body) = host
        .deploy(
            "cfg",
            wasm("config-guest"),
            json!({"route": "/cfg", "secrets": {
                "A": "file:db-password",
                "B": "env:E2E_OK_TOKEN",
                "C": "file:team/token",
                "D": "file:inside",
                "E": format!("file:{}/db-password", dir_arg),
            }}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for name in ["A", "B", "C", "D", "E"] {
        assert!(secret_is_set(&host, "/cfg", name).await, "secret {name}");
    }

    for (source, rule) in [
        (
            "file:/proc/self/environ",
            "inside the host's secrets directory",
        ),
        ("file:/etc/passwd", "inside the host's secrets directory"),
        ("file:../db-password", "plain name"),
        ("file:environ", "outside the secrets directory"),
        ("file:zero", "outside the secrets directory"),
        ("file:escape", "outside the secrets directory"),
        ("file:pipe", "not a regular file"),
        ("file:team", "not a regular file"),
        ("file:big", "limit for secrets"),
        ("file:missing", "cannot open"),
        ("env:E2E_OTHER", "--secret-env-prefix"),
        ("env:HOST_ADMIN_TOKEN", "--secret-env-prefix"),
        ("PATH", "--secret-env-prefix"),
    ] {
        let (status, body) = host
            .deploy(
                "bad",
                wasm("config-guest"),
                json!({"route": "/bad", "secrets": {"S": source}}),
                None,
            )
            .await;
        assert_eq!(status, 400, "{source}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(rule), "{source}: {message}");
        assert!(!message.contains(FILE_SECRET));
    }
    // Nothing was deployed, and the host (its workers, its registry) is
    // not stuck behind the FIFO: it answers, and deploys still work.
    let bad = client().get(host.url("/bad")).send().await.unwrap();
    assert_eq!(bad.status(), 404);
    let (status, _) = host
        .deploy(
            "cfg",
            wasm("config-guest"),
            json!({"secrets": {"A": "file:db-password"}}),
            None,
        )
        .await;
    assert_eq!(status, 201);
    assert!(secret_is_set(&host, "/cfg", "A").await);
}

#[tokio::test]
async fn without_a_secrets_dir_no_file_is_a_secret() {
    let host = Host::bare(&[]);
    let (status, body) = host
        .deploy(
            "cfg",
            wasm("config-guest"),
            json!({"route": "/cfg", "secrets": {"K": "file:/etc/hostname"}}),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--secrets-dir"),
        "{body}"
    );
    // The default prefix is APP_SECRET_: the host's own variables are out.
    let (status, body) = host
        .deploy(
            "cfg",
            wasm("config-guest"),
            json!({"route": "/cfg", "secrets": {"K": "env:HOME"}}),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("APP_SECRET_"),
        "{body}"
    );
}
