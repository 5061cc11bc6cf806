//! The dead-letter queue as ops use it: list, show, replay, purge.

use std::time::Duration;

use lapin::types::ShortString;
use lapin::BasicProperties;
use serde_json::Value;

use crate::support::daemon::{Daemon, Settings};
use crate::support::receiver::{Receiver, Reply};
use crate::support::{broker, eventually};

const WAIT: Duration = Duration::from_secs(30);

async fn publish(daemon: &Daemon, account: u64, n: u32) {
    let amqp = broker::connect().await;
    let body = serde_json::to_vec(&serde_json::json!({
        "event": "message_created", "id": n, "account": { "id": account },
    }))
    .expect("json");
    let props = BasicProperties::default().with_message_id(ShortString::from(format!("dlq-{n}")));
    broker::publish(
        &amqp,
        &daemon.names.exchange,
        "message_created",
        &body,
        props,
    )
    .await;
}

fn ids(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_in_place_replayed_once_fixed_and_purged_only_when_told() {
    for queue_kind in ["classic", "quorum"] {
        let daemon = Daemon::start(Settings {
            queue_kind,
            ..Settings::default()
        })
        .await;
        let receiver = Receiver::scripted(|_, _| Reply::status(404)).await;
        let broken = daemon.add_webhook(5, &receiver.url("/broken"), &[]).await;
        let broken_id = broken["id"].as_str().expect("id").to_owned();
        for n in 0..3 {
            publish(&daemon, 5, n).await;
        }
        let first = eventually(WAIT, "three dead letters", || async {
            let dead = daemon.dead_letters().await;
            (dead.len() == 3).then_some(dead)
        })
        .await;
        let second = daemon.dead_letters().await;
        assert_eq!(
            ids(&first),
            ids(&second),
            "{queue_kind}: listing twice, same order"
        );
        let filtered: Vec<Value> = serde_json::from_str(
            &daemon
                .cli_ok(&[
                    "dlq",
                    "list",
                    "--webhook",
                    &broken_id,
                    "--reason",
                    "rejected",
                    "--json",
                ])
                .await,
        )
        .expect("json");
        assert_eq!(filtered.len(), 3);

        let shown = daemon.cli_ok(&["dlq", "show", &ids(&first)[0]]).await;
        assert!(shown.contains("x-webhookd-reason: rejected"), "{shown}");
        assert!(shown.contains("\"account\""), "body shown: {shown}");

        let dry = daemon
            .cli_ok(&["dlq", "purge", "--webhook", &broken_id])
            .await;
        assert!(dry.contains("would purge 3"), "{dry}");
        assert_eq!(
            daemon.dead_letters().await.len(),
            3,
            "purge without --yes deletes nothing"
        );

        let refused = daemon.cli(&["dlq", "replay"]).await;
        assert_eq!(refused.status.code(), Some(1), "replay needs a selection");

        receiver.rescript(|_, _| Reply::status(200));
        let replayed = daemon
            .cli_ok(&["dlq", "replay", "--webhook", &broken_id])
            .await;
        assert!(replayed.contains("replayed 3"), "{replayed}");
        eventually(WAIT, "three replayed deliveries", || async {
            (receiver.requests("/broken").len() == 6).then_some(())
        })
        .await;
        let delivery_ids: std::collections::HashSet<String> = receiver
            .requests("/broken")
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        assert_eq!(delivery_ids.len(), 3, "replays keep their delivery ids");
        let dead_ids: std::collections::HashSet<String> = ids(&first).into_iter().collect();
        assert_eq!(
            delivery_ids, dead_ids,
            "dead letters are named by delivery id"
        );
        assert!(
            daemon.dead_letters().await.is_empty(),
            "replayed entries leave the DLQ"
        );

        receiver.rescript(|_, _| Reply::status(404));
        publish(&daemon, 5, 9).await;
        eventually(WAIT, "one more dead letter", || async {
            (daemon.dead_letters().await.len() == 1).then_some(())
        })
        .await;
        let purged = daemon.cli_ok(&["dlq", "purge", "--all", "--yes"]).await;
        assert!(purged.contains("purged 1"), "{purged}");
        assert!(daemon.dead_letters().await.is_empty());
    }
}
