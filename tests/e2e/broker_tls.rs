//! `amqps://` against a real RabbitMQ TLS listener: with the broker's private CA in
//! `broker.extra_ca_file` the daemon, `publish` and `dlq` all connect over TLS and an event is
//! delivered end to end; without it, or against a listener that does not speak TLS, every
//! connection fails closed, says why, and never falls back to plain AMQP.

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;

use crate::support::broker::{free_amqp_port, PrivateNode};
use crate::support::daemon::{Daemon, Settings};
use crate::support::pki::TestPki;
use crate::support::receiver::Receiver;
use crate::support::{eventually, unique};

const WAIT: Duration = Duration::from_secs(30);

/// A private node with a TLS listener on `tls_port` (its plain listener stays on `node.port`),
/// and a user whose password the tests look for in everything webhookd prints.
struct TlsBroker {
    node: PrivateNode,
    tls_port: u16,
    password: String,
    ca_file: PathBuf,
}

impl TlsBroker {
    async fn start() -> TlsBroker {
        let pki = TestPki::new();
        let node = PrivateNode::reserve("tls");
        let write = |name: &str, text: &str| {
            let path = node.home().join(name);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        let ca_file = write("ca.pem", &pki.ca_pem);
        let cert = write("server.pem", &pki.cert_pem);
        let key = write("server.key", &pki.key_pem);
        let tls_port = free_amqp_port();
        let conf = format!(
            "listeners.ssl.local = 127.0.0.1:{tls_port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            ca_file.display(),
            cert.display(),
            key.display()
        );
        node.start_with_conf(&conf).await;
        let password = unique("amqps-pw");
        node.ctl(&["add_user", "hooks", &password]).await;
        node.ctl(&["set_permissions", "-p", "/", "hooks", ".*", ".*", ".*"])
            .await;
        TlsBroker {
            node,
            tls_port,
            password,
            ca_file,
        }
    }

    fn url(&self, port: u16) -> String {
        format!("amqps://hooks:{}@127.0.0.1:{port}/%2f", self.password)
    }

    /// `ssl` and client properties of every connection webhookd opened on the node.
    async fn webhookd_connections(&self) -> Vec<String> {
        self.node
            .ctl(&[
                "list_connections",
                "-q",
                "--no-table-headers",
                "ssl",
                "client_properties",
            ])
            .await
            .lines()
            .filter(|line| line.contains("webhookd"))
            .map(str::to_owned)
            .collect()
    }
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_the_brokers_ca_in_extra_ca_file_delivers_over_tls() {
    let broker = TlsBroker::start().await;
    let daemon = Daemon::start(Settings {
        broker_url: Some(broker.url(broker.tls_port)),
        broker_extra: format!("extra_ca_file = {:?}", broker.ca_file.display().to_string()),
        ..Settings::default()
    })
    .await;
    let receiver = Receiver::ok().await;
    daemon.add_webhook(31, &receiver.url("/tls"), &[]).await;

    // `publish` goes over the same TLS connect.
    let published = daemon
        .cli_ok(&["publish", "--sample", "message_created", "--account", "31"])
        .await;
    assert!(published.starts_with("published "), "{published}");
    eventually(WAIT, "the event delivered", || async {
        (receiver.requests("/tls").len() == 1).then_some(())
    })
    .await;

    // Both of the daemon's connections are TLS connections, as the broker sees them.
    let connections = broker.webhookd_connections().await;
    for role in ["webhookd consumer", "webhookd publisher"] {
        let line = connections
            .iter()
            .find(|line| line.contains(role))
            .unwrap_or_else(|| panic!("no {role} connection in {connections:?}"));
        assert!(line.starts_with("true"), "{role} is not TLS: {line}");
    }
    // And so does `dlq`.
    assert!(daemon.dead_letters().await.is_empty());
    assert!(!daemon.logs().contains(&broker.password), "password logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_or_a_plain_listener_fails_closed() {
    let broker = TlsBroker::start().await;

    // The TLS listener, without its CA: the bundled roots do not trust it.
    let mut untrusting = Daemon::configure(Settings {
        broker_url: Some(broker.url(broker.tls_port)),
        ..Settings::default()
    });
    untrusting.spawn();
    let reason = eventually(
        WAIT,
        "/readyz to name the untrusted certificate",
        || async {
            let (status, body) = untrusting.get("/readyz").await;
            (status == StatusCode::SERVICE_UNAVAILABLE && body.contains("not trusted"))
                .then_some(body)
        },
    )
    .await;
    assert!(reason.contains("broker.extra_ca_file"), "{reason}");
    eventually(WAIT, "a second refused connection attempt", || async {
        (untrusting.logs().matches("not trusted").count() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        untrusting.get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let refused = untrusting
        .cli(&["publish", "--sample", "message_created", "--account", "1"])
        .await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("not trusted"), "{}", text(&refused));
    let refused = untrusting.cli(&["dlq", "list"]).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("not trusted"), "{}", text(&refused));

    // amqps:// at the plain listener: the handshake fails, and nothing speaks plain AMQP instead.
    let mut plain = Daemon::configure(Settings {
        broker_url: Some(broker.url(broker.node.port)),
        ..Settings::default()
    });
    plain.spawn();
    eventually(WAIT, "/readyz to name the failed handshake", || async {
        let (status, body) = plain.get("/readyz").await;
        (status == StatusCode::SERVICE_UNAVAILABLE && body.contains("TLS handshake")).then_some(())
    })
    .await;
    let refused = plain
        .cli(&["publish", "--sample", "message_created", "--account", "1"])
        .await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("TLS handshake"),
        "{}",
        text(&refused)
    );

    assert_eq!(
        broker.webhookd_connections().await,
        Vec::<String>::new(),
        "a connection got through"
    );
    for output in [untrusting.logs(), plain.logs(), text(&refused)] {
        assert!(!output.contains(&broker.password), "password shown");
    }
}
