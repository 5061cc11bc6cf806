//! Two webhookd instances on a 3-node RabbitMQ cluster, through a broker node and an instance
//! killed with SIGKILL and restarted: every event reaches every webhook, and the duplicates the
//! kills cause are counted, each carrying the delivery id of the event and webhook it repeats.
//!
//! It takes minutes (three nodes start and join, fifteen thousand deliveries), so it runs from
//! `scripts/cluster-test.sh`, not with the rest of the suite.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;

use crate::support::broker::{self, PrivateNode};
use crate::support::daemon::{Daemon, Settings};
use crate::support::eventually;
use crate::support::receiver::{Receiver, Reply};

/// Accounts that get events, each with three webhooks; one more account holds the thousandth
/// webhook and gets no events.
const ACCOUNTS: u64 = 333;
const WEBHOOKS: u64 = 1_000;
const EVENTS: u64 = 5_000;
const DELIVERIES: usize = (EVENTS * 3) as usize;

/// Long enough for a node's restart and a redelivery storm on this 2-core machine.
const WAIT: Duration = Duration::from_secs(300);

/// Each node's Raft write-ahead log is capped (512 MiB by default) to keep three nodes small.
const NODE_CONF: &str = "raft.wal_max_size_bytes = 8388608\n";

fn account_of(event: u64) -> u64 {
    event % ACCOUNTS + 1
}

/// The `members` of each of `names`' queues, from `rabbitmqctl list_queues name members`.
async fn members(node: &PrivateNode, prefix: &str) -> HashMap<String, usize> {
    let listing = node
        .ctl(&["list_queues", "-q", "--no-table-headers", "name", "members"])
        .await;
    listing
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| {
            let (name, members) = line.split_once('\t')?;
            Some((name.to_owned(), members.matches("@localhost").count()))
        })
        .collect()
}

/// 200s received so far, duplicates included: the run's progress.
fn delivered(receiver: &Receiver) -> usize {
    receiver.count(|r| r.status == Some(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 3-node cluster and 15,000 deliveries: run by scripts/cluster-test.sh"]
async fn two_instances_on_a_cluster_lose_nothing_through_a_node_and_an_instance_killed() {
    let started = Instant::now();
    let nodes = PrivateNode::cluster("cluster", 3, NODE_CONF).await;
    let cluster_up = started.elapsed();
    let urls = |order: [usize; 3]| order.map(|i| nodes[i].url()).to_vec();
    // One attempt in five fails with a 503, so a share of the deliveries goes through the
    // (quorum) delay queues while the nodes come and go.
    let receiver = Receiver::scripted(|_, seen| match seen % 5 {
        1 => Reply::status(503),
        _ => Reply::status(200),
    })
    .await;
    let settings = Settings {
        queue_kind: "quorum",
        max_elapsed: "30m",
        broker_urls: Some(urls([0, 1, 2])),
        ..Settings::default()
    };
    let a = Daemon::start(settings.clone()).await;

    // The registry, through instance A's API.
    let mut paths: HashMap<u64, Vec<String>> = HashMap::new();
    for n in 0..WEBHOOKS {
        let account = n / 3 + 1;
        let path = format!("/h/{n}");
        let body = serde_json::json!({
            "account_id": account, "url": receiver.url(&path), "events": ["message_created"],
        });
        let (status, text) = a
            .request_with_body(
                Method::POST,
                "/v1/webhooks",
                Some(&a.token),
                Bytes::from(body.to_string()),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
        paths.entry(account).or_default().push(path);
    }
    // B starts with an empty store, and rebuilds the registry from the log in the broker.
    let mut b = a.sibling(Settings {
        broker_urls: Some(urls([1, 2, 0])),
        ..settings
    });
    b.spawn();
    b.wait_ready().await;
    let (status, listed) = b.request(Method::GET, "/v1/webhooks", Some(&b.token)).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).expect("list JSON");
    assert_eq!(
        listed.len() as u64,
        WEBHOOKS,
        "B's registry after its start"
    );

    // Every queue webhookd declared has a replica on each of the three nodes.
    let queues = members(&nodes[2], &a.names.queue).await;
    let dead = members(&nodes[2], &a.names.dead_letters).await;
    assert_eq!(queues.get(&a.names.queue), Some(&3), "{queues:?}");
    assert_eq!(dead.get(&a.names.dead_letters), Some(&3), "{dead:?}");

    // The events go to node 3, which stays up; the faults come between batches, with
    // deliveries in flight.
    let amqp = broker::connect_to(&nodes[2].url()).await;
    let nacked = std::sync::atomic::AtomicUsize::new(0);
    let publish = |range: std::ops::Range<u64>| {
        let (amqp, exchange, nacked) = (&amqp, a.names.exchange.clone(), &nacked);
        async move {
            let events = range.map(|n| (account_of(n), n));
            let refused = broker::publish_events(amqp, &exchange, "message_created", events).await;
            nacked.fetch_add(refused, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let progress = |at_least: usize, what: &'static str| {
        let receiver = receiver.clone();
        async move {
            eventually(WAIT, what, || async {
                (delivered(&receiver) >= at_least).then_some(())
            })
            .await;
        }
    };
    publish(0..1_000).await;
    progress(1_500, "1,500 deliveries").await;

    // The node A consumes from dies; A moves to the next in its list.
    nodes[0].kill9().await;
    let killed_node_at = delivered(&receiver);
    publish(1_000..2_000).await;
    eventually(WAIT, "A consuming from node 2", || async {
        a.logs()
            .lines()
            .any(|line| {
                line.contains("consuming")
                    && line.contains(&format!("broker=127.0.0.1:{} ", nodes[1].port))
            })
            .then_some(())
    })
    .await;
    progress(4_500, "4,500 deliveries").await;

    // Instance B dies; A carries on alone.
    b.kill9();
    let killed_instance_at = delivered(&receiver);
    publish(2_000..3_000).await;
    progress(7_500, "7,500 deliveries").await;

    // Both come back.
    tokio::join!(nodes[0].restart(), async {
        b.spawn();
        b.wait_ready().await;
    });
    publish(3_000..EVENTS).await;

    // Every event reached each of its account's three webhooks.
    let expected: HashSet<(String, u64)> = (0..EVENTS)
        .flat_map(|n| paths[&account_of(n)].iter().map(move |p| (p.clone(), n)))
        .collect();
    assert_eq!(expected.len(), DELIVERIES);
    eventually(WAIT, "every delivery made", || async {
        (receiver.distinct(|r| (r.status == Some(200)).then(|| r.header("webhook-id").to_owned()))
            == DELIVERIES)
            .then_some(())
    })
    .await;

    // Each (webhook, event) pair: delivered, under one delivery id however often it came.
    let mut ids: HashMap<(String, u64), HashSet<String>> = HashMap::new();
    let mut oks: HashMap<(String, u64), usize> = HashMap::new();
    let requests = receiver.all();
    for request in &requests {
        let body: Value = serde_json::from_slice(&request.body).expect("event JSON");
        let key = (request.path.clone(), body["id"].as_u64().expect("event id"));
        ids.entry(key.clone())
            .or_default()
            .insert(request.header("webhook-id").to_owned());
        if request.status == Some(200) {
            *oks.entry(key).or_default() += 1;
        }
    }
    let lost: Vec<_> = expected.iter().filter(|k| !oks.contains_key(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    assert_eq!(oks.len(), DELIVERIES, "deliveries nobody expected");
    let split: Vec<_> = ids.iter().filter(|(_, ids)| ids.len() != 1).collect();
    assert!(
        split.is_empty(),
        "a pair under two delivery ids: {:?}",
        split.first()
    );
    let duplicates: usize = oks.values().map(|n| n - 1).sum();
    assert!(a.dead_letters().await.is_empty(), "dead letters");
    eventually(WAIT, "the work queue drained", || async {
        (broker::ready_count(&amqp, &a.names.queue).await == 0).then_some(())
    })
    .await;
    // The delay queues, declared while a node was down or after, have three replicas too.
    let delay = members(&nodes[2], &a.names.retry_prefix).await;
    assert!(!delay.is_empty(), "no delay queue was used");
    assert!(delay.values().all(|n| *n == 3), "{delay:?}");

    eprintln!(
        "cluster test: {WEBHOOKS} webhooks, {EVENTS} events, {DELIVERIES} deliveries made \
         ({} requests, {} answered 503, {duplicates} duplicate deliveries, each under its \
         delivery id; {} publishes nacked by the broker and published again); node 1 killed after {killed_node_at} deliveries, instance B after \
         {killed_instance_at}; cluster up in {:.0?}, whole run {:.0?}",
        requests.len(),
        requests.iter().filter(|r| r.status == Some(503)).count(),
        nacked.into_inner(),
        cluster_up,
        started.elapsed(),
    );
}
