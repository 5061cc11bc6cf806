//! Durable retries: the schedule, Retry-After, delay buckets, giving up, and surviving kill -9.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::types::ShortString;
use lapin::BasicProperties;
use serde_json::Value;

use crate::support::daemon::{Daemon, Settings};
use crate::support::receiver::{Received, Receiver, Reply};
use crate::support::{broker, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn event(account: u64, n: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event": "message_created",
        "id": n,
        "content": format!("message {n}"),
        "account": { "id": account },
    }))
    .expect("json")
}

async fn publish(daemon: &Daemon, account: u64, n: u32) {
    let amqp = broker::connect().await;
    let props =
        BasicProperties::default().with_message_id(ShortString::from(format!("ev-{account}-{n}")));
    broker::publish(
        &amqp,
        &daemon.names.exchange,
        "message_created",
        &event(account, n),
        props,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_twice_gets_the_third_attempt_and_the_other_webhook_gets_it_once() {
    // Retries over a second apart, so each attempt carries a new timestamp and signature.
    let daemon = Daemon::start(Settings {
        queue_kind: "quorum",
        initial_interval: "1200ms",
        max_interval: "3s",
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|path, seen| match (path, seen) {
        ("/flaky", 0 | 1) => Reply::status(503),
        _ => Reply::status(200),
    })
    .await;
    let flaky = daemon
        .add_webhook(1, &receiver.url("/flaky"), &["--generate-secret"])
        .await;
    daemon.add_webhook(1, &receiver.url("/steady"), &[]).await;
    publish(&daemon, 1, 1).await;

    let attempts = eventually(WAIT, "three attempts at /flaky", || async {
        let r = receiver.requests("/flaky");
        (r.len() >= 3).then_some(r)
    })
    .await;
    assert_eq!(
        attempts.len(),
        3,
        "delivered on the third attempt, then no more"
    );
    let ids: Vec<&str> = attempts.iter().map(|r| r.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one delivery id across retries: {ids:?}"
    );
    let signatures: Vec<&str> = attempts
        .iter()
        .map(|r| r.header("webhook-signature"))
        .collect();
    assert_ne!(signatures[0], signatures[1]);
    assert_ne!(signatures[1], signatures[2]);
    assert_eq!(
        receiver.requests("/steady").len(),
        1,
        "the 2xx webhook is never retried"
    );

    // The attempt log shows the story, newest first.
    let id = flaky["id"].as_str().expect("id");
    let log: Vec<Value> =
        serde_json::from_str(&daemon.cli_ok(&["webhooks", "attempts", id, "--json"]).await)
            .expect("json");
    let statuses: Vec<u64> = log
        .iter()
        .map(|a| a["status"].as_u64().expect("status"))
        .collect();
    assert_eq!(statuses, vec![200, 503, 503]);
    assert!(log.iter().all(|a| a["delivery_id"] == ids[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let daemon = Daemon::start(Settings {
        max_interval: "5s",
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|_, seen| match seen {
        0 => Reply::status(429).with_header("retry-after", "1"),
        _ => Reply::status(200),
    })
    .await;
    daemon.add_webhook(2, &receiver.url("/limited"), &[]).await;
    publish(&daemon, 2, 1).await;
    let attempts = eventually(WAIT, "the retry after 429", || async {
        let r = receiver.requests("/limited");
        (r.len() >= 2).then_some(r)
    })
    .await;
    let gap = attempts[1].at - attempts[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "Retry-After: 1 waited only {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_six_hour_wait_does_not_hold_back_a_short_one() {
    let daemon = Daemon::start(Settings {
        queue_kind: "quorum",
        max_interval: "6h",
        max_elapsed: "24h",
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|path, seen| match (path, seen) {
        ("/slow", _) => Reply::status(503).with_header("retry-after", "21600"),
        ("/quick", 0) => Reply::status(503),
        _ => Reply::status(200),
    })
    .await;
    daemon.add_webhook(1, &receiver.url("/slow"), &[]).await;
    daemon.add_webhook(2, &receiver.url("/quick"), &[]).await;
    publish(&daemon, 1, 1).await;
    eventually(WAIT, "the first attempt at /slow", || async {
        (!receiver.requests("/slow").is_empty()).then_some(())
    })
    .await;
    publish(&daemon, 2, 1).await;
    let quick = eventually(Duration::from_secs(10), "the quick retry", || async {
        let r = receiver.requests("/quick");
        (r.len() >= 2).then_some(r)
    })
    .await;
    assert!(quick[1].at - quick[0].at < Duration::from_secs(5));
    let amqp = broker::connect().await;
    let six_hours = format!("{}.21600s", daemon.names.retry_prefix);
    assert_eq!(
        broker::ready_count(&amqp, &six_hours).await,
        1,
        "the 6 h job still waits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_rejected_at_once_and_a_410_disables_the_webhook() {
    let daemon = Daemon::start(Settings::default()).await;
    let receiver = Receiver::scripted(|path, _| match path {
        "/missing" => Reply::status(404),
        _ => Reply::status(410),
    })
    .await;
    let missing = daemon.add_webhook(1, &receiver.url("/missing"), &[]).await;
    let gone = daemon.add_webhook(1, &receiver.url("/gone"), &[]).await;
    publish(&daemon, 1, 1).await;
    let dead = eventually(WAIT, "two dead letters", || async {
        let dead = daemon.dead_letters().await;
        (dead.len() >= 2).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 2);
    let by_webhook = |id: &Value| {
        dead.iter()
            .find(|d| d["webhook_id"] == *id)
            .unwrap_or_else(|| panic!("no dead letter for {id}"))
    };
    let rejected = by_webhook(&missing["id"]);
    assert_eq!(rejected["reason"], "rejected");
    assert_eq!(rejected["headers"]["x-webhookd-last-status"], "404");
    assert_eq!(rejected["attempts"], 1);
    assert_eq!(rejected["account_id"], 1);
    assert_eq!(rejected["event"], "message_created");
    let gone_letter = by_webhook(&gone["id"]);
    assert_eq!(gone_letter["reason"], "gone");
    assert_eq!(
        receiver.requests("/missing").len(),
        1,
        "a 404 is not retried"
    );

    let shown: Value = serde_json::from_str(
        &daemon
            .cli_ok(&[
                "webhooks",
                "show",
                gone["id"].as_str().expect("id"),
                "--json",
            ])
            .await,
    )
    .expect("json");
    assert_eq!(shown["enabled"], false, "410 disables the webhook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_recovers_is_exhausted_after_max_elapsed() {
    let daemon = Daemon::start(Settings {
        max_elapsed: "2s",
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|_, _| Reply::status(500)).await;
    daemon.add_webhook(1, &receiver.url("/down"), &[]).await;
    publish(&daemon, 1, 1).await;
    let dead = eventually(WAIT, "the exhausted dead letter", || async {
        let dead = daemon.dead_letters().await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead[0]["reason"], "exhausted");
    assert_eq!(dead[0]["last_status"], 500);
    let attempts = receiver.requests("/down");
    assert!(
        attempts.len() >= 3,
        "retried before giving up: {}",
        attempts.len()
    );
    assert_eq!(dead[0]["attempts"].as_u64(), Some(attempts.len() as u64));
    let span = attempts[attempts.len() - 1].at - attempts[0].at;
    assert!(
        span <= Duration::from_secs(2),
        "no attempt after max_elapsed: {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_waiting_in_delay_queues_survive_kill_9() {
    let mut daemon = Daemon::start(Settings {
        queue_kind: "quorum",
        initial_interval: "3s",
        max_interval: "3s",
        // Every event attempted once before the kill, which an open circuit would prevent.
        delivery_extra: "circuit_failures = 100".to_owned(),
        ..Settings::default()
    })
    .await;
    let fixed = Arc::new(AtomicBool::new(false));
    let receiver = {
        let fixed = fixed.clone();
        Receiver::scripted(move |_, _| {
            Reply::status(if fixed.load(Ordering::SeqCst) {
                200
            } else {
                503
            })
        })
        .await
    };
    daemon.add_webhook(1, &receiver.url("/r"), &[]).await;
    const EVENTS: u32 = 20;
    for n in 0..EVENTS {
        publish(&daemon, 1, n).await;
    }
    // Distinct delivery ids, not requests: on a slow machine the first events' retries come
    // before the last events' first attempts.
    let ids = |requests: &[Received]| -> HashSet<String> {
        requests
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect()
    };
    eventually(WAIT, "every event attempted once", || async {
        (ids(&receiver.requests("/r")).len() >= EVENTS as usize).then_some(())
    })
    .await;
    daemon.kill9();
    fixed.store(true, Ordering::SeqCst);
    let before_kill = receiver.requests("/r");
    let failed = ids(&before_kill);
    assert_eq!(failed.len(), EVENTS as usize);

    daemon.spawn();
    daemon.wait_ready().await;
    eventually(WAIT, "every delivery after the restart", || async {
        let delivered = ids(&receiver.requests("/r")[before_kill.len()..]);
        (delivered == failed).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_webhook_was_deleted_while_waiting_is_dropped() {
    let daemon = Daemon::start(Settings {
        initial_interval: "1s",
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|_, _| Reply::status(503)).await;
    let webhook = daemon.add_webhook(1, &receiver.url("/d"), &[]).await;
    publish(&daemon, 1, 1).await;
    eventually(WAIT, "the first attempt", || async {
        (!receiver.requests("/d").is_empty()).then_some(())
    })
    .await;
    daemon
        .cli_ok(&["webhooks", "rm", webhook["id"].as_str().expect("id")])
        .await;
    eventually(WAIT, "the job to be dropped", || async {
        let (_, metrics) = daemon.get("/metrics").await;
        metrics
            .contains("webhookd_jobs_dropped_total 1")
            .then_some(())
    })
    .await;
    assert_eq!(
        receiver.requests("/d").len(),
        1,
        "no attempt after deletion"
    );
    assert!(
        daemon.dead_letters().await.is_empty(),
        "dropped, not dead-lettered"
    );
    // The drop is logged with the delivery id the attempt carried, so one grep finds both.
    // (The metric is counted just before the line is written: wait for it.)
    let delivery_id = receiver.requests("/d")[0].header("webhook-id").to_owned();
    eventually(
        WAIT,
        &format!("a drop logged with {delivery_id}"),
        || async {
            daemon
                .logs()
                .lines()
                .any(|line| line.contains("job dropped") && line.contains(&delivery_id))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hangs_past_the_timeout_is_retried() {
    let daemon = Daemon::start(Settings {
        request_timeout: "500ms",
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|_, seen| match seen {
        0 => Reply::hang(),
        _ => Reply::status(200),
    })
    .await;
    let webhook = daemon.add_webhook(1, &receiver.url("/hangs"), &[]).await;
    publish(&daemon, 1, 1).await;
    eventually(WAIT, "the retry after the timeout", || async {
        (receiver.requests("/hangs").len() >= 2).then_some(())
    })
    .await;
    let id = webhook["id"].as_str().expect("id");
    let log: Vec<Value> = eventually(WAIT, "two attempts in the log", || async {
        let log: Vec<Value> =
            serde_json::from_str(&daemon.cli_ok(&["webhooks", "attempts", id, "--json"]).await)
                .expect("json");
        (log.len() == 2).then_some(log)
    })
    .await;
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[1]["status"], Value::Null);
    assert!(
        log[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_holds_at_most_its_endpoint_cap_and_the_stall_opens_its_circuit() {
    // Four prefetch slots and a receiver that never answers: without a per-endpoint cap its four
    // events would hold every slot and the healthy webhook would stall after four. With both of
    // its slots stuck for `circuit_stall` (1 s here), its circuit opens long before the 60 s
    // request timeout, and the two hanging attempts are cut off then, not at the timeout.
    let (daemon, receiver) = stalling(4).await;
    let hanging = daemon.add_webhook(1, &receiver.url("/hangs"), &[]).await;
    daemon.add_webhook(1, &receiver.url("/healthy"), &[]).await;
    const EVENTS: u32 = 12;
    for n in 0..EVENTS {
        publish(&daemon, 1, n).await;
    }
    eventually(WAIT, "every event at the healthy webhook", || async {
        (receiver.requests("/healthy").len() >= EVENTS as usize).then_some(())
    })
    .await;
    eventually(WAIT, "the hanging endpoint's circuit open", || async {
        (daemon.metric("webhookd_circuits_open").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        receiver.requests("/hangs").len(),
        2,
        "the hanging endpoint never has more than its cap in flight"
    );
    let errors = cut_off_attempts(&daemon, &hanging, 2).await;
    assert!(
        errors.iter().all(|error| error.contains("cut off")),
        "the stall, not a timeout, ended them: {errors:?}"
    );
}

/// A daemon with `prefetch` prefetch slots, two slots per endpoint, a 1 s stall and a 60 s request
/// timeout, and a receiver whose `/hangs` never answers while every other path answers 200.
async fn stalling(prefetch: u16) -> (Daemon, Receiver) {
    let mut daemon = Daemon::configure(Settings {
        request_timeout: "60s",
        delivery_extra: "max_in_flight_per_endpoint = 2\ncircuit_stall = \"1s\"".to_owned(),
        ..Settings::default()
    });
    let prefetch = prefetch.to_string();
    daemon.spawn_with_env(&[("WEBHOOKD_BROKER__PREFETCH", std::ffi::OsStr::new(&prefetch))]);
    daemon.wait_ready().await;
    let receiver = Receiver::scripted(|path, _| match path {
        "/hangs" => Reply::hang(),
        _ => Reply::status(200),
    })
    .await;
    (daemon, receiver)
}

/// The errors of `webhook`'s attempt log once it holds `count` attempts.
async fn cut_off_attempts(daemon: &Daemon, webhook: &Value, count: usize) -> Vec<String> {
    let id = webhook["id"].as_str().expect("id");
    eventually(WAIT, "the hanging attempts ended", || async {
        let log: Vec<Value> =
            serde_json::from_str(&daemon.cli_ok(&["webhooks", "attempts", id, "--json"]).await)
                .expect("json");
        (log.len() == count).then(|| {
            log.iter()
                .map(|attempt| attempt["error"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_requests_holding_the_whole_prefetch_window_are_cut_off_and_handed_to_the_retry_queue(
) {
    // Two prefetch slots, both taken by events whose only webhook hangs, so no further delivery
    // ever comes to that endpoint to notice its stall: the sweep must. Once it does, both
    // requests are cut off, their events go to the retry queue and are acked, and the other
    // account's events flow — long before the 60 s request timeout would have freed the window.
    let (daemon, receiver) = stalling(2).await;
    let hanging = daemon.add_webhook(1, &receiver.url("/hangs"), &[]).await;
    daemon.add_webhook(2, &receiver.url("/healthy"), &[]).await;
    publish(&daemon, 1, 0).await;
    publish(&daemon, 1, 1).await;
    eventually(WAIT, "both hanging requests out", || async {
        (receiver.requests("/hangs").len() == 2).then_some(())
    })
    .await;
    const LATER: u32 = 3;
    for n in 2..2 + LATER {
        publish(&daemon, 2, n).await;
    }
    eventually(WAIT, "the other account's events delivered", || async {
        (receiver.requests("/healthy").len() == LATER as usize).then_some(())
    })
    .await;
    let errors = cut_off_attempts(&daemon, &hanging, 2).await;
    assert!(
        errors.iter().all(|error| error.contains("cut off")),
        "{errors:?}"
    );
    assert_eq!(
        daemon.metric("webhookd_retries_scheduled_total").await,
        2.0,
        "both hanging events were handed to the retry queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_has_its_circuit_opened_and_one_probe_closes_it_after_the_cool_down() {
    // Three 503s in a row open the circuit; the events that arrive while it is open wait in the
    // retry queue without an attempt, and after the cool-down one probe (answered 200) closes it
    // and everything is delivered, once each.
    let daemon = Daemon::start(Settings {
        max_interval: "5s",
        delivery_extra: "circuit_failures = 3\ncircuit_cooldown = \"3s\"".to_owned(),
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|_, seen| match seen {
        0..=2 => Reply::status(503),
        _ => Reply::status(200),
    })
    .await;
    daemon.add_webhook(1, &receiver.url("/flaky"), &[]).await;
    for n in 0..3 {
        publish(&daemon, 1, n).await;
    }
    eventually(WAIT, "the circuit open after three failures", || async {
        (daemon.metric("webhookd_circuits_open").await == 1.0).then_some(())
    })
    .await;
    const LATER: u32 = 7;
    for n in 3..3 + LATER {
        publish(&daemon, 1, n).await;
    }
    // Three retries of the failures and seven deferrals, all while the circuit is open.
    eventually(WAIT, "the later events deferred", || async {
        (daemon.metric("webhookd_retries_scheduled_total").await >= f64::from(3 + LATER))
            .then_some(())
    })
    .await;
    assert_eq!(
        receiver.requests("/flaky").len(),
        3,
        "nothing is sent to an open circuit"
    );
    eventually(WAIT, "every event delivered", || async {
        let ok = receiver.count(|r| r.status == Some(200));
        (ok == 3 + LATER as usize).then_some(())
    })
    .await;
    let delivered: std::collections::BTreeSet<String> = receiver
        .requests("/flaky")
        .iter()
        .filter(|r| r.status == Some(200))
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(delivered.len(), 3 + LATER as usize, "each event once");
    assert_eq!(daemon.metric("webhookd_circuits_open").await, 0.0);
    assert_eq!(daemon.metric("webhookd_circuits_opened_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_queued_behind_the_global_cap_do_not_open_their_circuit() {
    // One global slot, held for the whole request timeout by a receiver that hangs but stays
    // under its own cap of two (so it is not stalled). The healthy webhook's deliveries wait for
    // that slot longer than `circuit_stall`, as many of them as its cap: they must wait, not be
    // taken for a stalled endpoint of their own, and go through once the slot is free.
    let daemon = Daemon::start(Settings {
        request_timeout: "4s",
        delivery_extra: "max_in_flight = 1\nmax_in_flight_per_endpoint = 2\ncircuit_stall = \"1s\""
            .to_owned(),
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|path, _| match path {
        "/hangs" => Reply::hang(),
        _ => Reply::status(200),
    })
    .await;
    daemon.add_webhook(1, &receiver.url("/hangs"), &[]).await;
    daemon.add_webhook(2, &receiver.url("/healthy"), &[]).await;
    publish(&daemon, 1, 0).await;
    let hanging_since = eventually(WAIT, "the hanging request holding the slot", || async {
        receiver.requests("/hangs").first().map(|r| r.at)
    })
    .await;
    publish(&daemon, 2, 1).await;
    publish(&daemon, 2, 2).await;
    // The stall rule is about time: the last delivery must arrive after `circuit_stall`.
    tokio::time::sleep_until((hanging_since + Duration::from_millis(1500)).into()).await;
    publish(&daemon, 2, 3).await;
    eventually(WAIT, "every healthy delivery", || async {
        (receiver.requests("/healthy").len() == 3).then_some(())
    })
    .await;
    assert_eq!(
        daemon.metric("webhookd_circuits_opened_total").await,
        0.0,
        "waiting for the global cap is not a stall"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_is_dead_lettered_before_its_webhook_is_disabled_even_when_the_first_park_fails() {
    let daemon = Daemon::start(Settings::default()).await;
    let receiver = Receiver::scripted(|_, _| Reply::status(410)).await;
    let gone = daemon.add_webhook(1, &receiver.url("/gone"), &[]).await;
    // With the DLQ deleted under the daemon, the first dead letter comes back unroutable: the
    // session ends, the next one declares the DLQ again, and the event is redelivered.
    let amqp = broker::connect().await;
    let channel = amqp.create_channel().await.expect("channel");
    channel
        .queue_delete(
            ShortString::from(daemon.names.dead_letters.as_str()),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the DLQ");
    publish(&daemon, 1, 1).await;
    let dead = eventually(WAIT, "the 410's dead letter", || async {
        let listed = daemon.cli(&["dlq", "list", "--json"]).await;
        if !listed.status.success() {
            return None; // the DLQ is not declared again yet
        }
        let dead: Vec<Value> = serde_json::from_slice(&listed.stdout).expect("json");
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead[0]["reason"], "gone");
    assert_eq!(dead[0]["webhook_id"], gone["id"]);
    assert!(
        receiver.requests("/gone").len() >= 2,
        "the redelivered event reached the webhook again"
    );
    let shown: Value = serde_json::from_str(
        &daemon
            .cli_ok(&[
                "webhooks",
                "show",
                gone["id"].as_str().expect("id"),
                "--json",
            ])
            .await,
    )
    .expect("json");
    assert_eq!(
        shown["enabled"], false,
        "disabled once its dead letter is written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_disabled_webhook_are_parked_and_replayed_only_once_it_is_enabled() {
    let daemon = Daemon::start(Settings {
        initial_interval: "1s",
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::scripted(|path, _| match path {
        "/paused" => Reply::status(503),
        _ => Reply::status(404),
    })
    .await;
    let paused = daemon.add_webhook(1, &receiver.url("/paused"), &[]).await;
    let paused_id = paused["id"].as_str().expect("id").to_owned();
    let removed = daemon.add_webhook(2, &receiver.url("/removed"), &[]).await;
    let removed_id = removed["id"].as_str().expect("id").to_owned();
    publish(&daemon, 1, 1).await;
    publish(&daemon, 2, 2).await;
    eventually(WAIT, "the first attempt", || async {
        (!receiver.requests("/paused").is_empty()).then_some(())
    })
    .await;
    daemon
        .cli_ok(&["webhooks", "update", &paused_id, "--disable"])
        .await;
    let dead = eventually(WAIT, "the waiting job parked", || async {
        let dead = daemon.dead_letters().await;
        dead.iter()
            .any(|d| d["webhook_id"] == paused_id.as_str())
            .then_some(dead)
    })
    .await;
    let parked = dead
        .iter()
        .find(|d| d["webhook_id"] == paused_id.as_str())
        .expect("parked");
    assert_eq!(parked["reason"], "webhook_disabled");
    assert_eq!(parked["attempts"], 1, "the job keeps its history");
    assert!(dead.iter().any(|d| d["webhook_id"] == removed_id.as_str()));
    daemon.cli_ok(&["webhooks", "rm", &removed_id]).await;

    // Replaying now would reach no receiver: the daemon would park the one again and drop the
    // other. Both stay where they are, and the CLI says why.
    let held = daemon.cli_ok(&["dlq", "replay", "--all"]).await;
    assert!(held.contains("replayed 0"), "{held}");
    assert!(
        held.contains(&format!("webhook {paused_id}, which is disabled")),
        "{held}"
    );
    assert!(
        held.contains(&format!("webhook {removed_id}, which was deleted")),
        "{held}"
    );
    assert_eq!(daemon.dead_letters().await.len(), 2);

    receiver.rescript(|_, _| Reply::status(200));
    daemon
        .cli_ok(&["webhooks", "update", &paused_id, "--enable"])
        .await;
    let replayed = daemon
        .cli_ok(&["dlq", "replay", "--webhook", &paused_id])
        .await;
    assert!(replayed.contains("replayed 1"), "{replayed}");
    eventually(WAIT, "the replayed job delivered", || async {
        receiver
            .requests("/paused")
            .iter()
            .any(|r| r.status == Some(200))
            .then_some(())
    })
    .await;
    let left = daemon.dead_letters().await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["webhook_id"], removed_id.as_str());
}
