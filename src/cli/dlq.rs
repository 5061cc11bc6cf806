//! `webhookd dlq …`: list, show, replay and purge dead letters, straight on the broker. A replay
//! first holds back the dead letters of webhooks that are disabled or deleted, which no receiver
//! would get.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::bail;
use clap::{Args, Subcommand};
use lapin::types::ShortString;

use super::webhooks::Registry;
use crate::broker::{self, Receives, Topology};
use crate::config::Config;
use crate::delivery::DeadReason;
use crate::dlq::{self, Action, Entry, Filter};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter; the queue is left as it was.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// A dead letter's headers and body.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back for delivery on a fresh schedule.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Say what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters (only with --yes).
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        all: bool,
        /// Really delete; without it, purge only says what it would delete.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Dead letters with this id (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub account: Option<u64>,
    #[arg(long)]
    pub webhook: Option<String>,
    /// exhausted, rejected, gone, blocked_destination, malformed, too_large, webhook_disabled
    /// or redelivered.
    #[arg(long)]
    pub reason: Option<DeadReason>,
    #[arg(long)]
    pub event: Option<String>,
    /// Dead since this time: RFC 3339 ("2026-11-25T10:00:00Z") or an age ("2h").
    #[arg(long, value_parser = parse_since)]
    pub since: Option<SystemTime>,
}
impl FilterArgs {
    fn into_filter(self) -> Filter {
        Filter {
            ids: self.ids,
            account_id: self.account,
            webhook_id: self.webhook,
            reason: self.reason,
            event: self.event,
            since: self.since,
            exclude_webhooks: HashSet::new(),
        }
    }
}

fn parse_since(value: &str) -> Result<SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(value) {
        return Ok(time);
    }
    humantime::parse_duration(value)
        .map(|age| SystemTime::now() - age)
        .map_err(|_| {
            format!(
                "expected an RFC 3339 time (2026-11-25T10:00:00Z) or an age (2h), got {value:?}"
            )
        })
}

/// How long the command waits for the broker to acknowledge closing its connection.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// `webhookd dlq …`.
pub async fn dlq(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    let topology = Topology::from_config(&config.broker);
    let (connection, _) = broker::connect(&config.broker, 0, "dlq", Receives::Messages).await?;
    let connection = Arc::new(connection);
    let outcome = dlq_on(config, &connection, &topology, command).await;
    // Bounded: lapin can leave the close of a connection whose channel was still closing
    // unanswered after the socket is gone, and the command's work is done by now.
    let closing = connection.close(200, ShortString::from("done"));
    let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
    outcome
}

async fn dlq_on(
    config: &Config,
    connection: &Arc<lapin::Connection>,
    topology: &Topology,
    command: DlqCommand,
) -> anyhow::Result<()> {
    match command {
        DlqCommand::List {
            filter,
            limit,
            json,
        } => {
            let entries = dlq::scan(
                connection,
                topology,
                &filter.into_filter(),
                limit,
                Action::Look,
                false,
                dlq::PATIENCE,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                for entry in &entries {
                    println!("{}", entry_line(entry));
                }
                println!("{} dead letter(s)", entries.len());
            }
        }
        DlqCommand::Show { id, json } => {
            let filter = Filter {
                ids: vec![id.clone()],
                ..Filter::default()
            };
            // The first with that id is enough: a duplicate carries the same delivery.
            let entries = dlq::scan(
                connection,
                topology,
                &filter,
                Some(1),
                Action::Look,
                true,
                dlq::PATIENCE,
            )
            .await?;
            let Some(entry) = entries.first() else {
                bail!("no dead letter with id {id}");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(entry)?);
            } else {
                println!("id: {}", entry.id);
                for (key, value) in &entry.headers {
                    println!("{key}: {value}");
                }
                println!("\n{}", entry.body.as_deref().unwrap_or_default());
            }
        }
        DlqCommand::Replay {
            filter,
            all,
            dry_run,
        } => {
            let mut filter = selection(filter, all, "replay")?;
            let held = held_back(config, connection, topology, &filter).await?;
            filter.exclude_webhooks = held.keys().cloned().collect();
            let action = if dry_run {
                Action::Look
            } else {
                Action::Replay
            };
            let entries = scan_and_print(connection, topology, &filter, action).await?;
            for (webhook, why) in &held {
                println!("left in place: dead letters of webhook {webhook}, which {why}");
            }
            if dry_run {
                println!("would replay {} dead letter(s) (dry run)", entries.len());
            } else {
                println!("replayed {} dead letter(s)", entries.len());
            }
        }
        DlqCommand::Purge { filter, all, yes } => {
            let filter = selection(filter, all, "purge")?;
            let action = if yes { Action::Purge } else { Action::Look };
            let entries = scan_and_print(connection, topology, &filter, action).await?;
            if yes {
                println!("purged {} dead letter(s)", entries.len());
            } else {
                println!(
                    "would purge {} dead letter(s); nothing deleted: add --yes to delete them",
                    entries.len()
                );
            }
        }
    }
    Ok(())
}

/// The webhooks among the selected dead letters that a replay would not reach, each with why:
/// the daemon parks a job for a disabled webhook again, and drops one for a deleted webhook, so
/// replaying those would report as replayed what no receiver gets. Found by a first pass that
/// reads only headers; a webhook disabled between the passes gets its jobs parked again.
async fn held_back(
    config: &Config,
    connection: &Arc<lapin::Connection>,
    topology: &Topology,
    filter: &Filter,
) -> anyhow::Result<BTreeMap<String, &'static str>> {
    let selected = dlq::scan(
        connection,
        topology,
        filter,
        None,
        Action::Look,
        false,
        dlq::PATIENCE,
    )
    .await?;
    let webhooks: BTreeSet<&str> = selected
        .iter()
        .filter_map(|entry| entry.webhook_id.as_deref())
        .collect();
    let mut held = BTreeMap::new();
    if webhooks.is_empty() {
        return Ok(held);
    }
    let registry = Registry::connect(config).await?;
    for webhook in webhooks {
        match registry.find(webhook).await? {
            Some(found) if found.enabled => {}
            Some(_) => {
                held.insert(
                    webhook.to_owned(),
                    "is disabled: enable it, then replay them",
                );
            }
            None => {
                held.insert(
                    webhook.to_owned(),
                    "was deleted: there is nowhere to deliver them (purge them)",
                );
            }
        }
    }
    Ok(held)
}

/// Replay and purge act on everything only when told `--all`, never by omission.
/// Replays, purges or only looks at (`action`) the dead letters `filter` selects, printing a
/// line for each.
async fn scan_and_print(
    connection: &Arc<lapin::Connection>,
    topology: &Topology,
    filter: &Filter,
    action: Action,
) -> anyhow::Result<Vec<Entry>> {
    let entries = dlq::scan(
        connection,
        topology,
        filter,
        None,
        action,
        false,
        dlq::PATIENCE,
    )
    .await?;
    for entry in &entries {
        println!("{}", entry_line(entry));
    }
    Ok(entries)
}

fn selection(filter: FilterArgs, all: bool, verb: &str) -> anyhow::Result<Filter> {
    let filter = filter.into_filter();
    if filter.is_empty() && !all {
        bail!("say which dead letters to {verb}: --id, a filter (--account, --webhook, --reason, --event, --since) or --all");
    }
    Ok(filter)
}

fn entry_line(e: &Entry) -> String {
    let last = match (e.last_status, &e.last_error) {
        (Some(status), _) => format!("last status {status}"),
        (None, Some(error)) => format!("last error {error}"),
        (None, None) => "-".to_owned(),
    };
    format!(
        "{}  {}  {}  account {}  webhook {}  {}  attempts {}  {}",
        e.id,
        e.dead_at.as_deref().unwrap_or("-"),
        e.reason,
        e.account_id.map_or("-".to_owned(), |a| a.to_string()),
        e.webhook_id.as_deref().unwrap_or("-"),
        e.event.as_deref().unwrap_or("-"),
        e.attempts,
        last,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn since_takes_a_time_or_an_age_and_says_what_it_expected() {
        assert!(parse_since("2026-11-25T10:00:00Z").is_ok());
        let age = parse_since("2h").expect("an age");
        let expected = SystemTime::now() - Duration::from_secs(7200);
        let diff = expected
            .duration_since(age)
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(5));
        let error = parse_since("yesterday").expect_err("not a time");
        assert!(error.contains("RFC 3339"), "{error}");
    }

    #[test]
    fn replay_without_a_selection_is_refused() {
        let empty = FilterArgs {
            ids: vec![],
            account: None,
            webhook: None,
            reason: None,
            event: None,
            since: None,
        };
        assert!(selection(empty, false, "replay").is_err());
    }
}
