//! The `webhookd` binary: parses the command line, loads the config, sets up logging, runs the
//! command, and maps failures to exit codes (0 ok, 1 failure, 2 usage, 64 bad config — the
//! sysexits `EX_USAGE` that linkerd uses for configuration errors).

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use webhookd::cli::{self, Cli, Command};
use webhookd::config::{Config, LogFormat};

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
    if let Err(error) = init_logging(&config, daemon) {
        eprintln!("webhookd: config: `log.level`: {error}");
        return ExitCode::from(EXIT_CONFIG);
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
            Command::Run => run(config).await,
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
/// unless `RUST_LOG` asks for more.
fn init_logging(
    config: &Config,
    daemon: bool,
) -> Result<(), tracing_subscriber::filter::ParseError> {
    let level = if daemon {
        config.log.level.as_str()
    } else {
        "warn"
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::try_new(level)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT; a second signal stops at once (unfinished messages
/// are never acked, so the broker redelivers them).
async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_stop_signal().await;
        tracing::info!("stop signal received");
        signals.cancel();
        wait_for_stop_signal().await;
        tracing::warn!("second stop signal: exiting now");
        std::process::exit(i32::from(EXIT_FAILURE));
    });
    webhookd::service::run(config, shutdown).await?;
    Ok(())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still stops on the default SIGTERM action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
