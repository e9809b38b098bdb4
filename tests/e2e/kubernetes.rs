//! The Kubernetes manifests in deploy/kubernetes: valid against the
//! Kubernetes schemas (kubernetes-validate, installed by `make tools`), and
//! consistent with the host's flags.

use std::process::Command;

use serde_json::Value;

use crate::harness::{host_bin, target_dir, workspace_root};

fn tools() -> std::path::PathBuf {
    target_dir().join("tools/bin")
}

fn manifests() -> Vec<std::path::PathBuf> {
    let dir = workspace_root().join("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every document of a YAML file, as JSON (PyYAML from the tools venv).
fn documents(path: &std::path::Path) -> Vec<Value> {
    let out = Command::new(tools().join("python"))
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .expect("run the tools venv's python: `make tools`");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let validator = tools().join("kubernetes-validate");
    assert!(
        validator.is_file(),
        "{} missing: run `make tools`",
        validator.display()
    );
    let files = manifests();
    assert_eq!(files.len(), 6, "{files:?}");
    let out = Command::new(validator)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert_eq!(report.matches("passed").count(), 8, "{report}");
}

#[test]
fn probes_ports_and_grace_period_match_the_host_flags() {
    let root = workspace_root().join("deploy/kubernetes");
    let deployment = documents(&root.join("deployment.yaml")).remove(0);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not set in {args:?}"))
    };

    // Every flag the manifest passes exists.
    let help = Command::new(host_bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        let name = arg.split('=').next().unwrap();
        assert!(help.contains(name), "the host has no flag {name}");
    }

    let port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(flag("--listen"), format!("0.0.0.0:{}", port("http")));
    assert_eq!(flag("--admin-listen"), format!("0.0.0.0:{}", port("admin")));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");

    let drain_ms: u64 = flag("--drain-timeout-ms").parse().unwrap();
    let delay_ms: u64 = flag("--shutdown-delay-ms").parse().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace * 1000 > drain_ms + delay_ms,
        "grace {grace}s must cover delay + drain"
    );

    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let state_mounted = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == flag("--state-dir"));
    assert!(
        state_mounted,
        "the state dir must be a writable volume under a read-only root"
    );

    let service = documents(&root.join("service.yaml")).remove(0);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let hpa = documents(&root.join("hpa.yaml")).remove(0);
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let config = documents(&root.join("configmap.yaml")).remove(0);
    let apps = config["data"]["apps.toml"].as_str().unwrap();
    assert!(apps.contains("[[app]]"));
    let mounted = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["configMap"]["name"] == config["metadata"]["name"]);
    assert!(mounted, "the apps ConfigMap is mounted");
    assert_eq!(flag("--manifest"), "/etc/host/apps.toml");
}

/// Cluster mode: the Deployment reads the cluster URL from the Secret
/// secret.yaml defines, mounted where the flag says; the URL names the
/// Redis Service of redis.yaml, which keeps its data (append-only file on a
/// volume claim) behind a password from the same Secret; the admin API has
/// a Service of its own.
#[test]
fn the_cluster_manifests_fit_together() {
    let root = workspace_root().join("deploy/kubernetes");
    let deployment = documents(&root.join("deployment.yaml")).remove(0);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let url_file = args
        .iter()
        .find_map(|a| a.strip_prefix("--cluster-url-file="))
        .expect("the host runs in cluster mode");
    let (dir, file) = url_file.rsplit_once('/').unwrap();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("the cluster URL's directory is mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let secret_name = volume["secret"]["secretName"].as_str().unwrap();
    let key = volume["secret"]["items"][0]["key"].as_str().unwrap();
    assert_eq!(volume["secret"]["items"][0]["path"], file);
    let secrets_dir = args
        .iter()
        .find_map(|a| a.strip_prefix("--secrets-dir="))
        .unwrap();
    assert!(
        !dir.starts_with(secrets_dir),
        "apps must not be able to read the cluster URL as a secret"
    );
    let replica_id = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "HOST_REPLICA_ID")
        .expect("each pod names itself");
    assert_eq!(
        replica_id["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );

    let secret = documents(&root.join("secret.yaml")).remove(0);
    assert_eq!(secret["metadata"]["name"], secret_name);
    let url = secret["stringData"][key].as_str().unwrap();
    let redis = documents(&root.join("redis.yaml"));
    let service = redis
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("a Redis Service");
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    let service_name = service["metadata"]["name"].as_str().unwrap();
    assert!(
        url.starts_with("redis://") && url.contains(&format!("@{service_name}:{port}/")),
        "{url} names the Redis Service"
    );
    let statefulset = redis
        .iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("a Redis StatefulSet");
    let spec = &statefulset["spec"]["template"]["spec"]["containers"][0];
    let command = spec.to_string();
    assert!(command.contains("--appendonly yes"), "{command}");
    assert!(command.contains("--requirepass"), "{command}");
    assert!(
        statefulset["spec"]["volumeClaimTemplates"]
            .as_array()
            .is_some_and(|v| !v.is_empty()),
        "Redis keeps its data on a volume claim"
    );

    let services = documents(&root.join("service.yaml"));
    assert!(
        services
            .iter()
            .any(|s| s["spec"]["ports"][0]["targetPort"] == "admin"),
        "the admin API has a Service"
    );
}
