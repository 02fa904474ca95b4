//! The bridge as a separate process, for tests that kill it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `eduzz-kafka-bridge serve` child process.
pub struct BridgeProcess {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub logs: mpsc::Receiver<String>,
}

impl BridgeProcess {
    /// Starts the binary with `config` (JSON logs) and waits until it serves.
    pub fn start(config: &Path) -> BridgeProcess {
        Self::start_with_env(config, &[])
    }

    /// Like [`BridgeProcess::start`], with more environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> BridgeProcess {
        let child = super::bridge()
            .args(["--config"])
            .arg(config)
            .arg("serve")
            .env("EKB__LOG__FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the bridge binary starts");
        let (tx, logs) = mpsc::channel();
        // Owned from here on: if anything below panics, Drop kills and reaps the child.
        let unknown: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let mut process = BridgeProcess {
            child,
            addr: unknown,
            admin: unknown,
            logs,
        };
        let stderr = process.child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            let line = process
                .logs
                .recv_timeout(Duration::from_secs(30))
                .expect("the bridge logs that it serves within 30 s");
            if let Some((webhook, admin)) = serving(&line) {
                process.addr = webhook;
                process.admin = admin;
                return process;
            }
        }
    }

    /// Sends `signal` (`HUP`, `TERM`, …) to the bridge.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// The exit status, if the bridge has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `wait` for a log line holding `needle`; every line read is kept in `seen`.
    pub fn wait_for_log(&self, needle: &str, wait: Duration, seen: &mut Vec<String>) -> bool {
        let until = std::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Resident memory of the process, in bytes (from /proc).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    /// Log lines printed so far.
    pub fn drain_logs(&self) -> Vec<String> {
        self.logs.try_iter().collect()
    }
}

/// The listeners' addresses, from the "serving" line in either log format: JSON
/// (`"webhook":"127.0.0.1:1234"`) or pretty (`webhook=127.0.0.1:1234`).
fn serving(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.contains("eduzz-kafka-bridge serving") {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        let addr = |key: &str| v[key].as_str()?.parse().ok();
        return Some((addr("webhook")?, addr("admin")?));
    }
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some((field("webhook")?, field("admin")?))
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
