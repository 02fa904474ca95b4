//! `sign`: the signature a sender would put in `x-signature`, for trying things with curl.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The webhook secret (also read from EDUZZ_WEBHOOK_SECRET).
    #[arg(long, env = "EDUZZ_WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
    /// File holding the body; standard input when absent.
    file: Option<PathBuf>,
}

pub(super) fn run(args: SignArgs) -> anyhow::Result<i32> {
    let body = match &args.file {
        Some(p) => std::fs::read(p)?,
        None => {
            let mut b = Vec::new();
            std::io::stdin().read_to_end(&mut b)?;
            b
        }
    };
    println!(
        "{}",
        crate::source::auth::sign_hex(args.secret.as_bytes(), &body)
    );
    Ok(0)
}
