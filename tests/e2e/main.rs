//! End-to-end tests: a real RabbitMQ, real HTTP receivers on loopback, the real binary.
//! Run them with `scripts/test.sh`, which starts the broker they need.

mod admin;
mod broker_tls;
mod cluster;
mod config;
mod console;
mod dlq;
mod failover;
mod faults;
mod hostile;
mod lifecycle;
mod limits;
mod ownership;
mod pipeline;
mod retries;
mod scale;
mod security;
mod service;
mod support;
