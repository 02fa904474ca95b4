//! The command line, run as a newcomer would run it.

use crate::harness::Test;
use std::time::Duration;

use crate::common::*;

fn check_config_accepts_the_shipped_configs_and_prints_the_routing_table() {
    for file in ["config/default.toml", "config/example.toml"] {
        let out = bridge()
            .args(["check-config", file])
            .env("EDUZZ_WEBHOOK_SECRET", "x")
            .env("EDUZZ_WEBHOOK_SECRET_PREVIOUS", "y")
            .env("TOOLZZ_WEBHOOK_TOKEN", "z")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for slug in [
            "nutror.lesson_started",
            "myeduzz.invoice_paid",
            "blinket.attendance_checkin",
            "alpaclass.student_created",
            "activities.certificate.issued",
        ] {
            assert!(
                stdout.contains(slug),
                "{file}: {slug} missing from\n{stdout}"
            );
        }
        assert!(!stdout.contains("dev-secret"), "secrets never printed");
        assert!(
            stdout.contains("archive: eduzz-bridge.archive (6 partitions")
                && stdout.contains("retention.ms=604800000"),
            "{file}: the archive and its spec\n{stdout}"
        );
    }
}

fn check_config_reports_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = "everywhere"

[sources.eduzz]
path = "/webhooks/eduzz"
format = "eduzz"
auth = { type = "hmac-sha256", secrets = ["env:EKB_TEST_UNSET_SECRET_VAR"] }

[[routes]]
match = "nutror.{"
topic = "eduzz events"
"#,
    )
    .unwrap();
    let out = bridge().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "server.listen",
        "sources.eduzz.auth.secrets[0]",
        "EKB_TEST_UNSET_SECRET_VAR",
        "routes[0].match",
        "routes[0].topic",
        "4 problems",
    ] {
        assert!(stderr.contains(needle), "{needle} missing from\n{stderr}");
    }
}

fn env_overrides_the_file() {
    let out = bridge()
        .args(["check-config", "config/default.toml"])
        .env("EKB__DELIVERY__ACK", "published")
        .env("EKB__KAFKA__BROKERS", "kafka-1:9092")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ack mode: published; kafka: kafka-1:9092"),
        "{stdout}"
    );
}

fn help_version_and_sign() {
    let out = bridge().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "check-config", "tail", "sign", "spool"] {
        assert!(help.contains(cmd), "{cmd} in --help");
    }
    let out = bridge().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));

    let file = crate::common::fixtures_dir().join("nutror.learner_help.json");
    let out = bridge()
        .args(["sign", "--secret", "s3"])
        .arg(&file)
        .output()
        .unwrap();
    let expected =
        eduzz_kafka_bridge::source::auth::sign_hex(b"s3", &std::fs::read(&file).unwrap());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
}

async fn tail_prints_what_the_bridge_published() {
    let app = TestApp::spawn("").await;
    let brokers = app.brokers.clone();
    let body = fixture("nutror.file_downloaded.json");
    assert_eq!(app.post_eduzz(&body, SECRET).await.status(), 200);

    let out = tokio::task::spawn_blocking(move || {
        bridge()
            .args([
                "tail",
                "--brokers",
                &brokers,
                "--topic",
                "nutror.file_downloaded",
            ])
            .args(["--count", "1", "--idle-timeout", "20"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["value"].as_str().unwrap().as_bytes(), body.as_slice());
    assert_eq!(line["key"], "iu6uf3b0nw6gc4oc8565rqwdm");
    assert_eq!(line["headers"]["event"], "nutror.file_downloaded");
    assert_eq!(line["headers"]["source"], "eduzz");
    app.shutdown().await;
}

async fn explain_dry_runs_every_fixture_and_publishes_nothing() {
    let broker = TestBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\n{SOURCES}\n[sources.toolzz.cloudevents]\nsource = \"/toolzz\"\n\n[topics]\npartitions = 12\n",
            broker.bootstrap()
        ),
    )
    .unwrap();
    for (name, body) in fixtures() {
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let toolzz = doc["event"].is_object();
        let id = match toolzz {
            true => eduzz_kafka_bridge::source::envelope::body_id(&body),
            false => doc["id"].as_str().unwrap().to_string(),
        };
        let slug = name.trim_end_matches(".json");
        let out = bridge()
            .args(["check-config"])
            .arg(&config)
            .arg("--explain")
            .arg(crate::common::fixtures_dir().join(&name))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {text}");
        let source = if toolzz { "toolzz" } else { "eduzz" };
        for line in [
            format!("source {source}: POST"),
            format!("  slug:       {slug}"),
            format!("  id:         {id}"),
            format!("  topic:      {slug}"),
            format!("  key:        {id}"),
            "  partitions: 12 (created on first write)".to_string(),
            format!("    event-id: {id}"),
            format!("    source: {source}"),
            format!(
                "  value:      the payload, byte for byte ({} bytes)",
                body.len()
            ),
            "nothing was published (dry run)".to_string(),
        ] {
            assert!(text.contains(&line), "{name}: no line '{line}' in\n{text}");
        }
        assert_eq!(
            text.contains(&format!("    ce_type: com.toolzz.{slug}")),
            toolzz,
            "{name}: CloudEvents headers only where configured\n{text}"
        );
        assert_topic_empty(broker.bootstrap(), slug, Duration::from_millis(300)).await;
    }
    let out = bridge()
        .args(["check-config"])
        .arg(&config)
        .arg("--explain")
        .arg(dir.path().join("bridge.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a TOML file is no payload");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no source takes this payload"));
}

fn check_config_refuses_a_body_limit_the_producer_could_never_publish() {
    let dir = tempfile::tempdir().unwrap();
    let check = |server: &str, kafka: &str| {
        let path = dir.path().join("bridge.toml");
        let text =
            format!("[server]\n{server}\n[kafka]\nbrokers = \"kafka:9092\"\n{kafka}\n{SOURCES}");
        std::fs::write(&path, text).unwrap();
        let out = bridge().arg("check-config").arg(&path).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // librdkafka's own message.max.bytes (1 000 000) is under the 1 MiB an operator may ask.
    let (code, stderr) = check("max_body_bytes = 1048576", "");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("server.max_body_bytes"), "{stderr}");
    assert!(stderr.contains("1000000"), "{stderr}");
    // The operator's producer properties are what count, in either direction.
    let raised = "[kafka.properties]\n\"message.max.bytes\" = 2000000";
    assert_eq!(check("max_body_bytes = 1048576", raised).0, Some(0));
    let lowered = "[kafka.properties]\n\"message.max.bytes\" = \"500000\"";
    let (code, stderr) = check("max_body_bytes = 600000", lowered);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("500000"), "{stderr}");
    // The defaults agree with each other, and a nonsense limit is named.
    assert_eq!(check("", "").0, Some(0));
    let (code, stderr) = check("", "[kafka.properties]\n\"message.max.bytes\" = \"lots\"");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("message.max.bytes"), "{stderr}");
}

/// This file's tests, as the harness (tests/api/main.rs) runs them.
pub(crate) fn tests() -> Vec<Test> {
    vec![
        Test::sync(
            "check_config_accepts_the_shipped_configs_and_prints_the_routing_table",
            check_config_accepts_the_shipped_configs_and_prints_the_routing_table,
        ),
        Test::sync(
            "check_config_reports_every_problem_with_its_key",
            check_config_reports_every_problem_with_its_key,
        ),
        Test::sync("env_overrides_the_file", env_overrides_the_file),
        Test::sync("help_version_and_sign", help_version_and_sign),
        Test::tokio(
            "tail_prints_what_the_bridge_published",
            tail_prints_what_the_bridge_published,
        ),
        Test::tokio(
            "explain_dry_runs_every_fixture_and_publishes_nothing",
            explain_dry_runs_every_fixture_and_publishes_nothing,
        ),
        Test::sync(
            "check_config_refuses_a_body_limit_the_producer_could_never_publish",
            check_config_refuses_a_body_limit_the_producer_could_never_publish,
        ),
    ]
}
