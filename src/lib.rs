//! webhookd turns account events published to RabbitMQ into signed webhook calls, retries
//! failures durably in the broker, and parks what cannot be delivered in a dead-letter queue.
//!
//! # Layout
//!
//! Each module is one stage of an event's way through the daemon:
//!
//! - [`config`]: the TOML file and `WEBHOOKD_*` overrides, validated once into typed values.
//! - [`event`]: the publisher's contract — the envelope decoder on the hot path and the typed
//!   `message_created` model used for validation, samples and tests.
//! - [`store`]: the sled-backed webhook registry and each webhook's attempt log.
//! - [`delivery`]: the HTTP client (SSRF guard, timeouts), signing, and the one function that
//!   turns a response into an [`delivery::Outcome`].
//! - [`retry`]: the backoff schedule as a pure value, its delay buckets, and the one decision
//!   after each turn: done, retry after a delay, or dead-letter.
//! - [`job`]: the `x-webhookd-*` headers a retry job or dead letter carries.
//! - [`broker`]: AMQP connections (plain or over TLS), topology, publisher confirms.
//! - [`tls`]: the roots deliveries and the broker connection trust, and their TLS settings.
//! - [`lifecycle`]: each webhook's health, disabling one that fails for days and telling the
//!   application, its rate limit, and the test delivery.
//! - [`dlq`]: dead-letter headers and the `webhookd dlq` operations.
//! - [`health`]: readiness and the systemd protocol, set by the service and read by admin.
//! - [`admin`]: health, readiness, metrics, and the `/v1` API with its principals (the admin
//!   token, account tokens).
//! - [`console`]: the web console at `/ui/`, served by the admin server: sessions, pages, and
//!   the browser-facing checks (Host, origin, CSRF, CSP).
//! - [`metrics`]: the counters behind `/metrics`.
//! - [`service`]: the wiring, and one event's way in stages: the broker session, one message,
//!   one attempt.
//! - [`cli`]: the command-line operations that are not the daemon itself.
//! - [`privilege`]: `webhooks` run as root acts as the owner of the store it opens.

pub mod admin;
pub mod broker;
pub mod cli;
pub mod config;
pub mod console;
pub mod delivery;
pub mod dlq;
pub mod event;
pub mod health;
pub mod job;
pub mod lifecycle;
pub mod metrics;
pub mod privilege;
pub mod registry;
pub mod retry;
pub mod service;
pub mod store;
pub mod tls;
