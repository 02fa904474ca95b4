//! The command line: `serve`, `check-config`, `topics`, `tail`, `sign`, `spool`.

/// `println!` for command output that ends the process quietly (exit 0) when stdout's reader
/// has gone (`check-config | head`): that is the reader's choice, not an error, and
/// `println!` would panic on it.
macro_rules! say {
    () => {
        $crate::cli::say(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::say(format_args!($($arg)*))
    };
}

mod archive_args;
mod check;
mod dead_letters;
mod events;
mod parked;
mod replay;
mod sign;
mod spool;
mod tail;
mod topics;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Receives Eduzz and Toolzz webhooks, answers at once, and republishes every event to Kafka.
#[derive(Debug, Parser)]
#[command(name = "eduzz-kafka-bridge", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML). Every key can be overridden by EKB__SECTION__KEY variables.
    #[arg(
        long,
        short,
        global = true,
        env = "EKB_CONFIG",
        default_value = "config/default.toml"
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge (with no kafka.brokers set, on an embedded development broker).
    Serve,
    /// Validate a configuration and print the routing table of the known slugs.
    CheckConfig {
        /// File to check (default: --config).
        file: Option<PathBuf>,
        /// Dry run: which source takes this payload file, its slug, id, topic, key, partitions
        /// and headers. Nothing is published.
        #[arg(long, value_name = "PAYLOAD")]
        explain: Option<PathBuf>,
        /// With --explain: the source to try (default: every source, in order).
        #[arg(long, requires = "explain")]
        source: Option<String>,
    },
    /// Compare the topics the routes write with the cluster (`plan`), or create and grow
    /// them (`apply`).
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Print the events of a topic: one JSON line each, with key, headers and value.
    Tail(tail::TailArgs),
    /// Print the x-signature header value for a body (to try the bridge with curl).
    Sign(sign::SignArgs),
    /// Inspect or empty the spool (only while the bridge is stopped).
    #[command(subcommand)]
    Spool(spool::SpoolCommand),
    /// Look up archived deliveries: where each went (see README, "Where is event X").
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// The dead-letter topic: list its events, or send them back once the cause is fixed.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// The parked events of a running bridge: list, redrive, purge (through its admin
    /// listener).
    #[command(subcommand)]
    Parked(parked::ParkedCommand),
    /// Send archived deliveries again through today's routes (see README, "Replay").
    Replay(replay::ReplayArgs),
    /// Run the embedded development broker on its own and print its address, so bridges
    /// (and benchmarks) can restart against a broker that keeps its topics. SIGUSR1 takes it
    /// down (connections refused) and SIGUSR2 brings it back, for trying out an outage.
    DevBroker {
        /// Number of brokers in the mock cluster.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
    },
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Serve => serve(&cli.config),
        Command::CheckConfig {
            file,
            explain,
            source,
        } => {
            let file = file.as_deref().unwrap_or(&cli.config);
            match explain {
                Some(payload) => check::explain(file, &payload, source.as_deref()),
                None => check::run(file),
            }
        }
        Command::Topics(cmd) => topics::run(&cli.config, cmd),
        Command::Tail(args) => tail::run(args),
        Command::Sign(args) => sign::run(args),
        Command::Spool(cmd) => spool::run(&cli.config, cmd),
        Command::Events(cmd) => events::run(&cli.config, cmd),
        Command::Replay(args) => replay::run(&cli.config, args),
        Command::Parked(cmd) => parked::run(&cli.config, cmd),
        Command::DeadLetters(cmd) => dead_letters::run(&cli.config, cmd),
        Command::DevBroker { brokers } => dev_broker(brokers),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// Writes one line of command output (see `say!`).
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(line).and_then(|()| out.write_all(b"\n"));
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1)
        }
        Ok(()) => {}
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn load(path: &std::path::Path) -> anyhow::Result<crate::config::Config> {
    Ok(crate::config::Config::load(path)?)
}

fn serve(config: &std::path::Path) -> anyhow::Result<i32> {
    let config = load(config)?;
    let runtime = runtime()?;
    // Inside the runtime: the gRPC exporter's channel lives on it.
    let telemetry = {
        let _inside = runtime.enter();
        crate::telemetry::init_serving(&config.log, config.tracing.as_ref())
    };
    // Every open connection is a descriptor: use all the hard limit allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-files limit");
    }
    let served = serve_on(&runtime, config);
    // The spans of the last events (their publish at shutdown among them) are exported
    // while the runtime, and the gRPC channel on it, still runs.
    telemetry.shutdown();
    served
}

fn serve_on(
    runtime: &tokio::runtime::Runtime,
    config: crate::config::Config,
) -> anyhow::Result<i32> {
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // Taken over before anything else: SIGHUP's default action ends the process, and a
        // `kill -HUP`, logrotate or a closed terminal must never stop the bridge. Signals that
        // arrive while it starts wait in the stream.
        let hup = signal(SignalKind::hangup()).context("cannot install a SIGHUP handler")?;
        let app = crate::app::Application::build(config).await?;
        tokio::spawn(on_hangup(hup, app.tls_reloader()));
        let stop = app.stop_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            stop.stop();
        });
        app.run_until_stopped().await?;
        Ok(0)
    })
}

/// SIGHUP reloads the TLS certificate, or with TLS off does nothing (and says so); it never
/// stops the bridge.
async fn on_hangup(
    mut hup: tokio::signal::unix::Signal,
    cert: Option<std::sync::Arc<crate::http::tls::ReloadingCert>>,
) {
    while hup.recv().await.is_some() {
        match cert.as_ref().map(|c| c.reload()) {
            None => tracing::info!("SIGHUP: nothing to reload (TLS is off)"),
            Some(Ok(())) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Some(Err(e)) => {
                tracing::error!(error = %crate::problem::with_causes(&e), "SIGHUP: TLS certificate not reloaded; the current one stays")
            }
        }
    }
}

fn dev_broker(brokers: i32) -> anyhow::Result<i32> {
    let broker = crate::kafka::broker::EmbeddedBroker::start(brokers)?;
    // The address alone on stdout, for scripts; the rest on stderr.
    println!("{}", broker.bootstrap_servers());
    use std::io::Write;
    std::io::stdout().flush()?;
    eprintln!(
        "development broker (in memory) at {}; Ctrl-C to stop",
        broker.bootstrap_servers()
    );
    runtime()?.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut down = signal(SignalKind::user_defined1())?;
        let mut up = signal(SignalKind::user_defined2())?;
        let stop = wait_for_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return anyhow::Ok(()),
                _ = down.recv() => { eprintln!("development broker down"); broker.set_up(false) }
                _ = up.recv() => { eprintln!("development broker up"); broker.set_up(true) }
            }
        }
    })?;
    drop(broker);
    Ok(0)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
