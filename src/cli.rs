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

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_PATH};

pub use self::dlq::{dlq, DlqCommand, FilterArgs};
pub use self::publish::{publish, PublishArgs};
pub use self::tokens::{tokens, TokensCommand};
pub use self::webhooks::{webhooks, SecretArgs, WebhooksCommand};

#[derive(Debug, Parser)]
#[command(
    name = "webhookd",
    version,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
