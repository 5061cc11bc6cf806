//! The command line: the argument grammar, and every command that is not the daemon itself.
//!
//! These are edges of the program (they print for people and exit), so they use `anyhow` for
//! errors and say what went wrong in words an operator can act on. `webhooks …` talks to the
//! running daemon's admin API, because the daemon holds sled's exclusive lock; with no daemon
//! listening it opens the store itself (run as root, as the store's owner: `main` switches user
//! through `privilege` before the runtime starts). `dlq …` and `publish` talk to the broker
//! directly, so they work whether or not the daemon runs.
//!
//! # Layout
//!
//! This file is the grammar's top: [`Cli`] and its [`Command`]s, which `main` dispatches on, and
//! one entry point per command, re-exported from the submodule that runs it. Each submodule holds
//! its command's arguments next to the code that acts on them, so the grammar reads downward and
//! nothing below imports back up:
//!
//! - `webhooks`: the `webhooks …` commands, and the registry client they share with `dlq`
//!   (the admin API, or the store opened directly).
//! - `tokens`: the `tokens …` commands, through the same registry client.
//! - `dlq`: the `dlq …` commands, with the check that holds back a replay no webhook would take.
//! - `publish`: `publish`, through the broker module's confirmed
//!   [`Publisher`](crate::broker::Publisher), as the daemon publishes.

mod dlq;
mod publish;
mod tokens;
mod webhooks;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use crate::config::{Config, DEFAULT_PATH};

pub use self::dlq::{dlq, DlqCommand, FilterArgs};
pub use self::publish::{publish, PublishArgs};
pub use self::tokens::{tokens, TokensCommand};
pub use self::webhooks::{webhooks, SecretArgs, WebhooksCommand};

/// What `--version` prints after the name: the crate's version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("WEBHOOKD_BUILD_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "webhookd",
    version = VERSION,
    about = "Delivers account events from RabbitMQ to webhooks: signed, retried, dead-lettered with a reason."
)]
pub struct Cli {
    /// The config file (TOML).
    #[arg(long, global = true, env = "WEBHOOKD_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: consume events and deliver them until SIGTERM.
    Run,
    /// Validate the config and print it, secrets masked.
    CheckConfig,
    /// Publish an event to the exchange, as an application would.
    Publish(PublishArgs),
    /// Manage webhooks (through the running daemon's admin API).
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Issue, list and revoke account tokens (for /v1 and the console, one account each).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Inspect, replay and purge the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

/// `webhookd check-config`.
pub fn check_config(config: &Config) {
    print!("{}", config.to_masked_toml());
}

/// Writes the man pages (`DIR/man`: webhookd.1 and a page per subcommand) and the bash, zsh and
/// fish completions (`DIR/completions`) for the package. They come from this grammar when the
/// package is built (`cargo run --example package-assets DIR`), so what an installed system
/// documents is what the binary parses. An example rather than a hidden subcommand: clap's
/// completions would offer even a hidden one.
pub fn package_assets(dir: &Path) -> anyhow::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "webhookd", &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_names_the_commit_built_from() {
        let head = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|output| output.status.success());
        let built_from = match head {
            Some(output) => format!("commit {}", String::from_utf8_lossy(&output.stdout).trim()),
            None => "commit unknown: not built from a git checkout".to_owned(),
        };
        assert_eq!(
            Cli::command().render_version().trim(),
            format!("webhookd {} ({built_from})", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn package_assets_document_every_command() {
        let dir = tempfile::tempdir().expect("temporary directory");
        package_assets(dir.path()).expect("package assets");
        let read = |path: &str| {
            std::fs::read_to_string(dir.path().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        let page = read("man/webhookd.1");
        assert!(
            page.contains(VERSION),
            "the page names the version and commit"
        );
        for command in ["run", "check\\-config", "publish", "webhooks", "dlq"] {
            assert!(page.contains(command), "webhookd(1) lists {command}");
        }
        read("man/webhookd-webhooks-add.1");
        for path in [
            "completions/webhookd.bash",
            "completions/_webhookd",
            "completions/webhookd.fish",
        ] {
            let script = read(path);
            for command in ["check-config", "webhooks", "replay"] {
                assert!(script.contains(command), "{path} completes {command}");
            }
        }
    }
}
