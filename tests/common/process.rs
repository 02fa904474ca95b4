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
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "eduzz-kafka-bridge serving" {
                process.addr = v["webhook"].as_str().unwrap().parse().unwrap();
                process.admin = v["admin"].as_str().unwrap().parse().unwrap();
                return process;
            }
        }
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

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
