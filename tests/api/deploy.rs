//! deploy/ cannot be run here (no Docker engine, no cluster), so this checks what can be
//! checked: every YAML parses, the manifests name the bridge's real ports, probe paths and spool
//! directory, and the configs they carry pass the bridge's own validation.

use crate::harness::Test;
use std::path::{Path, PathBuf};

use eduzz_kafka_bridge::config::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The config `text` builds, its `env:` secrets written out as literals: what it is once the
/// deployment sets them, without `set_var` (which races with every test reading the
/// environment in this process). The text itself must not carry a secret.
fn load_config_text(text: &str) -> Config {
    assert!(text.contains("\"env:"), "secrets come from the environment");
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"env:") {
        literal.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after.find('"').expect("a quoted env: reference ends");
        literal.push_str("\"literal-for-test\"");
        rest = &after[end + 1..];
    }
    literal.push_str(rest);
    Config::from_toml(&literal).unwrap_or_else(|e| panic!("{e}"))
}

fn port_of(addr: impl ToString) -> i64 {
    addr.to_string()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn the_container_config_is_valid_and_listens_beyond_loopback() {
    let s = load_config_text(&std::fs::read_to_string(root().join("deploy/config.toml")).unwrap());
    assert!(s.server.listen.to_string().starts_with("0.0.0.0:"));
    assert!(
        s.admin.unwrap().to_string().starts_with("0.0.0.0:"),
        "probes come from outside the container"
    );
    assert!(
        s.kafka.brokers.is_some(),
        "never the embedded broker in a deployment"
    );
}

fn the_statefulset_matches_the_config_it_mounts() {
    let cm = &yaml("deploy/k8s/configmap.yaml")[0];
    let settings = load_config_text(cm["data"]["config.toml"].as_str().unwrap());
    let sts = &yaml("deploy/k8s/statefulset.yaml")[0];
    assert_eq!(sts["kind"].as_str(), Some("StatefulSet"));
    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];

    let ports: Vec<(String, i64)> = c["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(ports.contains(&("webhook".into(), port_of(settings.server.listen))));
    assert!(ports.contains(&("admin".into(), port_of(settings.admin.unwrap()))));
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"]["port"].as_str(),
        Some("admin")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["port"].as_str(),
        Some("admin")
    );

    let mounts = c["volumeMounts"].as_vec().unwrap();
    let spool = mounts
        .iter()
        .find(|m| m["name"].as_str() == Some("spool"))
        .unwrap();
    assert_eq!(
        Path::new(spool["mountPath"].as_str().unwrap()),
        settings.spool.dir
    );
    let claims = sts["spec"]["volumeClaimTemplates"].as_vec().unwrap();
    assert_eq!(claims[0]["metadata"]["name"].as_str(), Some("spool"));
    let config_mount = mounts
        .iter()
        .find(|m| m["name"].as_str() == Some("config"))
        .unwrap();
    let env = c["env"].as_vec().unwrap();
    let config_path = env
        .iter()
        .find(|e| e["name"].as_str() == Some("EKB_CONFIG"))
        .unwrap()["value"]
        .as_str()
        .unwrap();
    assert!(config_path.starts_with(config_mount["mountPath"].as_str().unwrap()));

    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        grace as u64 > settings.server.shutdown_grace.as_secs(),
        "the pod outlives the bridge's grace period"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
}

fn kustomize_lists_every_manifest_and_services_expose_the_right_ports() {
    let k = &yaml("deploy/k8s/kustomization.yaml")[0];
    let listed: Vec<&str> = k["resources"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for entry in std::fs::read_dir(root().join("deploy/k8s")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name != "kustomization.yaml" {
            assert!(
                listed.contains(&name.as_str()),
                "{name} is not in kustomization.yaml"
            );
        }
        yaml(&format!("deploy/k8s/{name}"));
    }
    let services = yaml("deploy/k8s/service.yaml");
    let public = services
        .iter()
        .find(|s| s["metadata"]["name"].as_str() == Some("eduzz-kafka-bridge"))
        .unwrap();
    let targets: Vec<&str> = public["spec"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| p["targetPort"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        ["webhook"],
        "the public service exposes only webhooks"
    );
    let hpa = &yaml("deploy/k8s/hpa.yaml")[0];
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["kind"].as_str(),
        Some("StatefulSet")
    );
    assert_eq!(
        yaml("deploy/k8s/pdb.yaml")[0]["kind"].as_str(),
        Some("PodDisruptionBudget")
    );
    for kind in ["ConfigMap", "Secret"] {
        let file = format!("deploy/k8s/{}.yaml", kind.to_lowercase());
        assert_eq!(yaml(&file)[0]["kind"].as_str(), Some(kind));
    }
}

fn the_dockerfile_runs_as_non_root_with_a_volume_and_a_healthcheck() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let settings =
        load_config_text(&std::fs::read_to_string(root().join("deploy/config.toml")).unwrap());
    let last_stage = text.rsplit("\nFROM ").next().unwrap();
    let user = last_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(user.trim() != "0" && user.trim() != "root");
    let volume = last_stage
        .lines()
        .find_map(|l| l.strip_prefix("VOLUME "))
        .unwrap();
    assert_eq!(Path::new(volume.trim()), settings.spool.dir);
    assert!(last_stage.contains(&format!(
        "http://127.0.0.1:{}/healthz",
        port_of(settings.admin.unwrap())
    )));
    assert!(last_stage.contains(&format!(
        "EXPOSE {} {}",
        port_of(settings.server.listen),
        port_of(settings.admin.unwrap())
    )));
    assert!(last_stage.contains("STOPSIGNAL SIGTERM"));
    assert!(last_stage.contains("COPY deploy/config.toml"));
}

fn compose_runs_kafka_the_bridge_and_a_consumer() {
    let c = &yaml("deploy/compose.yaml")[0];
    let services = &c["services"];
    for name in ["kafka", "bridge", "consumer"] {
        assert!(!services[name].is_badvalue(), "service {name}");
    }
    let bridge = &services["bridge"];
    assert_eq!(
        bridge["build"]["dockerfile"].as_str(),
        Some("deploy/Dockerfile")
    );
    assert_eq!(
        bridge["environment"]["EKB__KAFKA__BROKERS"].as_str(),
        Some("kafka:9092")
    );
    let ports: Vec<&str> = bridge["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(ports.contains(&"8080:8080"));
    let volume = bridge["volumes"][0].as_str().unwrap();
    assert!(volume.ends_with(":/var/lib/eduzz-kafka-bridge/spool"));
    assert_eq!(
        services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"].as_str(),
        Some("broker,controller")
    );
}

fn the_systemd_unit_stops_gracefully() {
    let text =
        std::fs::read_to_string(root().join("deploy/systemd/eduzz-kafka-bridge.service")).unwrap();
    let settings =
        load_config_text(&std::fs::read_to_string(root().join("deploy/config.toml")).unwrap());
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing"))
            .to_string()
    };
    assert!(value("ExecStart").ends_with("eduzz-kafka-bridge serve"));
    assert_eq!(value("KillSignal"), "SIGTERM");
    let stop: u64 = value("TimeoutStopSec").parse().unwrap();
    assert!(stop > settings.server.shutdown_grace.as_secs());
    assert_eq!(value("StateDirectory"), "eduzz-kafka-bridge");
    assert!(settings
        .spool
        .dir
        .starts_with("/var/lib/eduzz-kafka-bridge"));
}

fn the_replicas_share_a_persistent_redis_for_dedupe() {
    // Kubernetes: the ConfigMap points dedupe.shared at the Service redis.yaml defines.
    let cm = &yaml("deploy/k8s/configmap.yaml")[0];
    let settings = load_config_text(cm["data"]["config.toml"].as_str().unwrap());
    let shared = settings
        .shared_dedupe
        .expect("dedupe.shared is set")
        .describe();
    let docs = yaml("deploy/k8s/redis.yaml");
    let service = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Service"))
        .unwrap();
    let name = service["metadata"]["name"].as_str().unwrap();
    let port = service["spec"]["ports"][0]["port"].as_i64().unwrap();
    assert!(shared.contains(&format!("{name}:{port}")), "{shared}");
    let redis = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("StatefulSet"))
        .unwrap();
    let args: Vec<&str> = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--appendonly", "yes"]),
        "{args:?}"
    );
    // Its pods are never selected by the bridge's StatefulSet or Services: they carry neither
    // the bridge's name (kustomize puts it on metadata only) nor its component.
    let pod_labels = &redis["spec"]["template"]["metadata"]["labels"];
    assert!(
        pod_labels["app.kubernetes.io/name"].is_badvalue(),
        "{pod_labels:?}"
    );
    let kustomize = &yaml("deploy/k8s/kustomization.yaml")[0];
    for l in kustomize["labels"].as_vec().unwrap() {
        assert_ne!(l["includeSelectors"].as_bool(), Some(true));
        assert_ne!(l["includeTemplates"].as_bool(), Some(true));
    }
    let component = |d: &Yaml| d["spec"]["selector"]["app.kubernetes.io/component"].clone();
    for s in yaml("deploy/k8s/service.yaml") {
        assert_eq!(component(&s).as_str(), Some("bridge"));
    }
    assert_eq!(component(service).as_str(), Some("redis"));

    // Compose: a Redis beside Kafka, and the bridge told where it is.
    let c = &yaml("deploy/compose.yaml")[0];
    let services = &c["services"];
    assert!(!services["redis"].is_badvalue());
    let url = services["bridge"]["environment"]["EKB__DEDUPE__SHARED"]
        .as_str()
        .unwrap();
    assert!(url.starts_with("redis://redis:"), "{url}");
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::sync(
            "the_container_config_is_valid_and_listens_beyond_loopback",
            the_container_config_is_valid_and_listens_beyond_loopback,
        ),
        Test::sync(
            "the_statefulset_matches_the_config_it_mounts",
            the_statefulset_matches_the_config_it_mounts,
        ),
        Test::sync(
            "kustomize_lists_every_manifest_and_services_expose_the_right_ports",
            kustomize_lists_every_manifest_and_services_expose_the_right_ports,
        ),
        Test::sync(
            "the_dockerfile_runs_as_non_root_with_a_volume_and_a_healthcheck",
            the_dockerfile_runs_as_non_root_with_a_volume_and_a_healthcheck,
        ),
        Test::sync(
            "compose_runs_kafka_the_bridge_and_a_consumer",
            compose_runs_kafka_the_bridge_and_a_consumer,
        ),
        Test::sync(
            "the_systemd_unit_stops_gracefully",
            the_systemd_unit_stops_gracefully,
        ),
        Test::sync(
            "the_replicas_share_a_persistent_redis_for_dedupe",
            the_replicas_share_a_persistent_redis_for_dedupe,
        ),
    ]
}
