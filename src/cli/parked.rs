//! `parked list | redrive | purge`: the parked events of a running bridge, through its admin
//! listener (the spool is the bridge's while it runs; see `src/http/parked.rs`).

use clap::{Args, Subcommand};

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum ParkedCommand {
    /// List the parked events (JSON).
    List(AdminArgs),
    /// Send every parked event again now (once its cause is fixed).
    Redrive(AdminArgs),
    /// Delete the parked events from the spool: they are lost.
    Purge {
        #[command(flatten)]
        admin: AdminArgs,
        /// Yes, delete them.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The bridge's admin listener (default: admin.listen).
    #[arg(long)]
    admin: Option<String>,
}

impl AdminArgs {
    fn base(&self, config: &Config) -> anyhow::Result<String> {
        let addr = match (&self.admin, config.admin) {
            (Some(a), _) => a.clone(),
            (None, Some(a)) => a.to_string(),
            (None, None) => {
                anyhow::bail!("admin.listen is empty in this config: pass --admin HOST:PORT")
            }
        };
        Ok(match addr.starts_with("http://") {
            true => addr,
            false => format!("http://{addr}"),
        })
    }
}

pub(super) fn run(config_path: &std::path::Path, cmd: ParkedCommand) -> anyhow::Result<i32> {
    let config = super::load(config_path)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let (status, body) = match &cmd {
        ParkedCommand::List(a) => call(&agent, "GET", &format!("{}/parked", a.base(&config)?))?,
        ParkedCommand::Redrive(a) => call(
            &agent,
            "POST",
            &format!("{}/parked/redrive", a.base(&config)?),
        )?,
        ParkedCommand::Purge { admin, yes } => {
            let base = admin.base(&config)?;
            let (_, listed) = call(&agent, "GET", &format!("{base}/parked"))?;
            let count = serde_json::from_str::<serde_json::Value>(&listed)?["count"]
                .as_u64()
                .unwrap_or(0);
            if !yes {
                eprintln!("{count} parked events would be deleted and lost; run again with --yes to delete them");
                return Ok(1);
            }
            call(
                &agent,
                "POST",
                &format!("{base}/parked/purge?confirm={count}"),
            )?
        }
    };
    say!("{body}");
    Ok(if (200..300).contains(&status) { 0 } else { 1 })
}

fn call(agent: &ureq::Agent, method: &str, url: &str) -> anyhow::Result<(u16, String)> {
    let response = match method {
        "POST" => agent.post(url).send_empty(),
        _ => agent.get(url).call(),
    };
    let mut response =
        response.map_err(|e| anyhow::anyhow!("cannot reach the admin listener at {url}: {e}"))?;
    let status = response.status().as_u16();
    Ok((status, response.body_mut().read_to_string()?))
}
