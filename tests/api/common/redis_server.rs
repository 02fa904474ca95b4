//! A `redis-server` of a test's own, on a free loopback port, for the fleet tests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server that persists every write (append-only file, fsync always), so a
/// restart keeps what the bridges marked; killed when dropped.
pub struct TestRedis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts redis-server, or returns None when it is not installed (CI installs it, so
    /// there a missing binary is a failure, not a skip).
    pub fn start() -> Option<TestRedis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            super::skip_without("redis-server", "apt-get install redis-server");
            return None;
        }
        let port = super::free_port();
        let mut redis = TestRedis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        redis.resume();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server (SIGTERM: it writes its file and exits) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts the server again on the same port and data, and waits until it answers.
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let started = Instant::now();
        while self.query(&["PING"]).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server answers within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one command; `None` when the server does not answer.
    pub fn query(&self, args: &[&str]) -> Option<redis::Value> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).ok()
    }

    /// The keys the bridges wrote (their values as text), for assertions.
    pub fn entries(&self) -> Vec<(String, String)> {
        let Some(redis::Value::Array(keys)) = self.query(&["KEYS", "*"]) else {
            return Vec::new();
        };
        keys.into_iter()
            .filter_map(|k| match k {
                redis::Value::BulkString(k) => Some(String::from_utf8_lossy(&k).into_owned()),
                _ => None,
            })
            .filter_map(|k| match self.query(&["GET", &k]) {
                Some(redis::Value::BulkString(v)) => {
                    Some((k, String::from_utf8_lossy(&v).into_owned()))
                }
                _ => None,
            })
            .collect()
    }

    /// How many commands the server refused with error `code` (`OOM`, `READONLY`) since it
    /// started, from `INFO errorstats`.
    pub fn errors(&self, code: &str) -> u64 {
        let Some(redis::Value::BulkString(info)) = self.query(&["INFO", "errorstats"]) else {
            return 0;
        };
        let prefix = format!("errorstat_{code}:count=");
        String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
