//! The `webhookd` binary: parses the command line, loads the config, sets up logging, runs the
//! command, and maps failures to exit codes (0 ok, 1 failure, 2 usage, 64 bad config — the
//! sysexits `EX_USAGE` that linkerd uses for configuration errors).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};
use webhookd::cli::{self, Cli, Command};
use webhookd::config::{Config, LogFormat};
use webhookd::privilege;

const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("webhookd: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let daemon = matches!(cli.command, Command::Run);
    let log = match init_logging(&config, daemon) {
        Ok(log) => log,
        Err(error) => {
            eprintln!("webhookd: config: `log.level`: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    warn_of_readable_secret_files(&config);
    // Before the runtime starts threads: the whole process changes user at once.
    if matches!(cli.command, Command::Webhooks(_)) {
        match privilege::act_as_store_owner(&config.store.path) {
            Ok(Some(owner)) => tracing::info!(
                uid = owner.uid,
                gid = owner.gid,
                "running as the store's owner"
            ),
            Ok(None) => {}
            Err(error) => {
                eprintln!("webhookd: {error}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("webhookd: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run => run(config, cli.config, log).await,
            Command::CheckConfig => {
                cli::check_config(&config);
                Ok(())
            }
            Command::Publish(args) => cli::publish(&config, args).await,
            Command::Webhooks(command) => cli::webhooks(&config, command).await,
            Command::Dlq(command) => cli::dlq(&config, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("webhookd: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The daemon logs at the configured level; the one-shot commands only say what went wrong,
/// unless `RUST_LOG` asks for more. The filter sits behind a reload handle so SIGHUP can change
/// the level of a running daemon.
fn init_logging(
    config: &Config,
    daemon: bool,
) -> Result<LogLevel, tracing_subscriber::filter::ParseError> {
    let level = if daemon {
        config.log.level.as_str()
    } else {
        "warn"
    };
    let from_env = std::env::var("RUST_LOG").ok().filter(|d| !d.is_empty());
    let filter = EnvFilter::try_new(from_env.as_deref().unwrap_or(level))?;
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only on a terminal: journald and log files get plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    match config.log.format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
    Ok(LogLevel {
        handle,
        from_env: from_env.is_some(),
    })
}

/// A secret file others can read is logged, not refused: it is worth fixing, but the daemon can
/// still run safely if the directory around it is closed.
fn warn_of_readable_secret_files(config: &Config) {
    for file in config.readable_secret_files() {
        tracing::warn!("{file}");
    }
}

/// Changes the log filter of the running process.
struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set at start: it stays in force over `log.level`.
    from_env: bool,
}

impl LogLevel {
    fn set(&self, level: &str) {
        if self.from_env {
            tracing::warn!("RUST_LOG is set: it stays in force over log.level");
            return;
        }
        let applied = EnvFilter::try_new(level)
            .map_err(|error| error.to_string())
            .and_then(|filter| {
                self.handle
                    .reload(filter)
                    .map_err(|error| error.to_string())
            });
        if let Err(error) = applied {
            tracing::error!(%error, "reload: cannot apply log.level");
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT. A second stop signal exits at once: unfinished
/// messages are never acked, so the broker redelivers them. SIGHUP reloads the config file.
async fn run(config: Config, path: PathBuf, log: LogLevel) -> anyhow::Result<()> {
    // Registered before the service starts, so no signal meets the default action (which for
    // SIGHUP is to terminate the process).
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let shutdown = CancellationToken::new();
    let (reloads, reloaded) = watch::channel(config.clone());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    reload(&path, &log, &reloads);
                    continue;
                }
            }
            if stop.is_cancelled() {
                tracing::warn!(
                    "second stop signal: exiting now; unfinished messages stay with the broker"
                );
                std::process::exit(i32::from(EXIT_FAILURE));
            }
            tracing::info!("stop signal received");
            stop.cancel();
        }
    });
    webhookd::service::run(config, shutdown, reloaded).await?;
    Ok(())
}

/// SIGHUP: loads the file again. An invalid file changes nothing; a valid one sets the log level
/// here and goes to the service for the rest.
fn reload(path: &Path, log: &LogLevel, reloads: &watch::Sender<Config>) {
    tracing::info!(path = %path.display(), "SIGHUP: reloading the configuration");
    match Config::load(path) {
        Ok(config) => {
            log.set(&config.log.level);
            warn_of_readable_secret_files(&config);
            reloads.send_replace(config);
        }
        Err(error) => {
            tracing::error!(%error, "reload: the configuration is invalid; keeping the running one");
        }
    }
}
