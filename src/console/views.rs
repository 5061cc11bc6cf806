//! The console's pages, as maud templates: HTML the compiler checks, every value escaped.
//!
//! Markup only: no inline script or style (the Content-Security-Policy forbids both), status in
//! words beside any colour, a label for every input and a fieldset for the events.

use std::time::Duration;

use maud::{html, Markup, DOCTYPE};

use super::session::Flash;
use super::{page_of, words, Form};
use crate::admin::Principal;
use crate::delivery::ALL_REASONS;
use crate::dlq::Entry;
use crate::event::KNOWN_EVENTS;
use crate::lifecycle::{self, Circuit, Trial, DEFAULT_TEST_EVENT, TEST_OUTCOME};
use crate::metrics::Gauges;
use crate::store::{Attempt, Webhook};

pub const DELETE_QUESTION: &str = "Are you sure to delete the webhook?";
pub const ROTATE_QUESTION: &str = "Rotate the signing secret? The new secret is shown once; the \
    old one keeps signing alongside it for the rotation grace.";
pub const REPLAY_QUESTION: &str =
    "Replay these dead letters? Each is delivered again on a fresh retry schedule.";
pub const PURGE_QUESTION: &str = "Purge these dead letters? They are deleted for good.";

/// What every page of a session shows around its body.
pub struct Page<'a> {
    pub principal: Principal,
    pub csrf: &'a str,
    pub flash: Option<&'a Flash>,
}

/// How a webhook fares: its health as `GET /v1/webhooks/{id}` gives it (this instance's
/// attempts, tracked in memory), and how long its URL's circuit stays open.
pub struct Health {
    pub measured: lifecycle::Health,
    pub circuit_open_for: Option<Duration>,
}

/// A store field's label in the console's forms.
pub fn label_of(field: &str) -> &str {
    match field {
        "url" => "Webhook URL",
        "events" => "Events",
        "name" => "Name",
        "inbox_id" => "Inbox id",
        "account_id" => "Account id",
        other => other,
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · webhookd" }
            link rel="stylesheet" href="/ui/assets/console.css";
            script src="/ui/assets/console.js" defer {}
        }
    }
}

pub fn sign_in(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body {
                main .narrow {
                    h1 { "webhookd" }
                    p { "Sign in with the admin token, or with the account token you were given." }
                    @if let Some(error) = error {
                        p .error role="alert" { (error) }
                    }
                    form method="post" action="/ui/sign-in" {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="token" { "Token" }
                        div .reveal {
                            input #token type="password" name="token" required autocomplete="off" autofocus;
                        }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

pub fn layout(page: &Page<'_>, body: Markup) -> Markup {
    let who = match page.principal {
        Principal::Operator => "Operator".to_owned(),
        Principal::Account(account) => format!("Account {account}"),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Console"))
            body {
                header {
                    nav aria-label="Console" {
                        a .brand href="/ui/webhooks" { "webhookd" }
                        a href="/ui/webhooks" { "Webhooks" }
                        a href="/ui/dead-letters" { "Dead letters" }
                        @if page.principal == Principal::Operator {
                            a href="/ui/overview" { "Overview" }
                        }
                    }
                    div .who {
                        span { (who) }
                        form method="post" action="/ui/sign-out" {
                            (csrf(page.csrf))
                            button .link type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    @match page.flash {
                        Some(Flash::Secret { webhook_id, secret }) => {
                            section .secret role="status" {
                                h2 { "Signing secret" }
                                p { "Copy it now: it is shown only once. Receivers verify each delivery with it." }
                                div .copy-row {
                                    input #secret readonly value=(secret) aria-label="Signing secret" data-webhook=(webhook_id);
                                    button type="button" data-copy="secret" { "Copy" }
                                }
                            }
                        }
                        Some(Flash::Notice(text)) => p .notice role="status" { (text) },
                        Some(Flash::Trial(trial)) => {
                            p .(if trial.ok { "notice" } else { "error" }) role="status" { (trial_words(trial)) }
                        }
                        None => {}
                    }
                    (body)
                }
            }
        }
    }
}

/// The session's CSRF token as a hidden field: every form that posts carries it.
fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

pub fn problem(message: &str) -> Markup {
    html! {
        h1 { "Something is wrong" }
        p .error role="alert" { (message) }
        p { a href="/ui/webhooks" { "Back to webhooks" } }
    }
}

fn status_words(webhook: &Webhook) -> Markup {
    html! {
        @if webhook.enabled {
            span .badge.ok { "Enabled" }
        } @else {
            span .badge.off { "Disabled" }
            @if let Some(reason) = &webhook.disabled_reason {
                " " small { (disabled_words(reason)) }
            }
        }
    }
}

fn disabled_words(reason: &str) -> &str {
    match reason {
        "manual" => "by hand",
        "gone" => "the receiver answered 410 Gone",
        "failing" => "failing for too long",
        other => other,
    }
}

/// The last attempt: when, and its status (or error) in words beside the colour.
fn last_attempt(health: &lifecycle::Health) -> Markup {
    let success = health.last_success_at.as_deref();
    let failure = health.last_failure_at.as_deref();
    // RFC 3339 with milliseconds, all in UTC: the later one sorts last.
    html! {
        @match (success, failure) {
            (Some(at), failure) if failure.is_none_or(|failed| failed < at) => {
                span .badge.ok { "Delivered: " (status_text(health.last_success_status, None)) }
                " " small { (at) }
            }
            (_, Some(at)) => {
                span .badge.bad {
                    "Failed: "
                    (status_text(health.last_failure_status, health.last_failure_error.as_deref()))
                }
                " " small { (at) }
            }
            _ => span .muted { "No attempts yet" },
        }
    }
}

/// What a test event got, in words: the status (or the error) and how long it took.
fn trial_words(trial: &Trial) -> String {
    let verdict = if trial.ok { "delivered" } else { "failed" };
    let answer = status_text(trial.status, trial.error.as_deref());
    format!(
        "Test event {verdict}: {answer} in {} ms ({}, delivery {}).",
        trial.latency_ms, trial.event, trial.delivery_id
    )
}

fn status_text(status: Option<u16>, error: Option<&str>) -> String {
    match (status, error) {
        (Some(status), _) => status.to_string(),
        (None, Some(error)) => error.to_owned(),
        (None, None) => "-".to_owned(),
    }
}

/// The share of the last 24 hours' attempts answered 2xx.
fn success_rate(health: &lifecycle::Health) -> Markup {
    html! {
        @match health.success_rate_24h {
            // Rounded down, so a single failure never shows as 100%.
            Some(rate) => {
                ((rate * 1000.0).floor() / 10.0) "% of " (health.attempts_24h) " succeeded"
            }
            None => span .muted { "No attempts" },
        }
    }
}

fn circuit(health: &Health) -> Markup {
    html! {
        @match health.measured.circuit {
            Circuit::Closed => span .badge.ok { "Circuit closed" },
            Circuit::HalfOpen => span .badge.warn { "Circuit half-open: testing the URL" },
            Circuit::Open => {
                span .badge.bad { "Circuit open" }
                @if let Some(open) = health.circuit_open_for { " " small { "for " (words(open)) } }
            }
        }
    }
}

fn failing(health: &lifecycle::Health) -> Option<Markup> {
    let since = health.failing_since.as_deref()?;
    Some(html! {
        "Since " (since) ", " (health.consecutive_failures) " failed attempts in a row"
    })
}

/// The health column of the Webhooks page: the last attempt, the 24 h success rate, the circuit,
/// and how long it has been failing.
fn health_cell(health: &Health) -> Markup {
    let measured = &health.measured;
    html! {
        (last_attempt(measured)) br;
        small { "24 h: " } (success_rate(measured)) br;
        (circuit(health))
        @if let Some(failing) = failing(measured) { br; small { "Failing: " (failing) } }
    }
}

/// An attempt's colour; a test is coloured by its answer, as it does not retry.
fn outcome_class(attempt: &Attempt) -> &'static str {
    match attempt.outcome.as_str() {
        "delivered" => "ok",
        "retry" => "warn",
        TEST_OUTCOME if attempt.status.is_some_and(|s| (200..300).contains(&s)) => "ok",
        _ => "bad",
    }
}

pub fn webhooks(
    principal: Principal,
    account: Option<u64>,
    rows: &[(Webhook, Health)],
    paged: bool,
    next: Option<&str>,
) -> Markup {
    html! {
        div .title-row {
            h1 { "Webhooks" }
            a .button href="/ui/webhooks/new" { "Add new webhook" }
        }
        @if principal == Principal::Operator {
            form .filters method="get" action="/ui/webhooks" {
                label for="account" { "Account id" }
                input #account name="account" inputmode="numeric" value=[account];
                button type="submit" { "Show" }
            }
        }
        @if rows.is_empty() {
            p { "No webhooks yet. " a href="/ui/webhooks/new" { "Add new webhook" } " to receive events." }
        } @else {
            div .table-wrap {
                table .cards {
                    caption .visually-hidden { "Webhooks" }
                    @if principal == Principal::Operator {
                        (head_row(&["URL", "Name", "Account", "Events", "Status", "Health"]))
                    } @else {
                        (head_row(&["URL", "Name", "Events", "Status", "Health"]))
                    }
                    tbody {
                        @for (webhook, health) in rows {
                            tr {
                                td data-label="URL" { a href={ "/ui/webhooks/" (webhook.id) } { (webhook.url) } }
                                td data-label="Name" { (webhook.name.as_deref().unwrap_or("")) }
                                @if principal == Principal::Operator { td data-label="Account" { (webhook.account_id) } }
                                td data-label="Events" { (webhook.events.join(", ")) }
                                td data-label="Status" { (status_words(webhook)) }
                                td data-label="Health" { (health_cell(health)) }
                            }
                        }
                    }
                }
            }
        }
        nav .pager aria-label="Pages" {
            @if paged { a href="/ui/webhooks" { "First page" } }
            @if let Some(next) = next { a href=(next) rel="next" { "Next page" } }
        }
    }
}

pub fn webhook_form(
    token: &str,
    principal: Principal,
    webhook: Option<&Webhook>,
    error: Option<&str>,
) -> Markup {
    let (title, action, button) = match webhook {
        Some(w) => (
            "Edit webhook",
            format!("/ui/webhooks/{}", w.id),
            "Update webhook",
        ),
        None => (
            "Add new webhook",
            "/ui/webhooks".to_owned(),
            "Create webhook",
        ),
    };
    let subscribed = |event: &str| webhook.is_some_and(|w| w.events.iter().any(|e| e == event));
    html! {
        h1 { (title) }
        @if let Some(error) = error {
            p .error role="alert" { (error) }
        }
        form .stacked method="post" action=(action) {
            (csrf(token))
            @if webhook.is_none() && principal == Principal::Operator {
                div .field {
                    label for="account_id" { "Account id" }
                    input #account_id name="account_id" inputmode="numeric" required;
                    small { "The account whose events this webhook receives." }
                }
            }
            div .field {
                label for="url" { "Webhook URL" }
                input #url name="url" type="url" required placeholder="https://example.com/api/webhook"
                    value=[webhook.map(|w| w.url.as_str())];
            }
            div .field {
                label for="name" { "Name" }
                input #name name="name" value=[webhook.and_then(|w| w.name.as_deref())];
            }
            fieldset {
                legend { "Events" }
                @for event in KNOWN_EVENTS {
                    div .check {
                        input type="checkbox" name="events" value=(event) id={ "event-" (event) } checked[subscribed(event)];
                        label for={ "event-" (event) } { (event) }
                    }
                }
            }
            div .field {
                label for="inbox_id" { "Inbox id (optional)" }
                input #inbox_id name="inbox_id" inputmode="numeric" value=[webhook.and_then(|w| w.inbox_id)];
            }
            div .actions {
                button type="submit" { (button) }
                a href=(webhook.map_or("/ui/webhooks".to_owned(), |w| format!("/ui/webhooks/{}", w.id))) { "Cancel" }
            }
        }
    }
}

pub fn webhook(
    token: &str,
    webhook: &Webhook,
    health: &Health,
    attempts: &[Attempt],
    offset: usize,
) -> Markup {
    let base = format!("/ui/webhooks/{}", webhook.id);
    let (shown, more) = page_of(attempts, offset);
    html! {
        h1 { (webhook.name.as_deref().unwrap_or("Webhook")) }
        dl .facts {
            dt { "URL" } dd { code { (webhook.url) } }
            dt { "Id" } dd { code { (webhook.id) } }
            dt { "Account" } dd { (webhook.account_id) }
            dt { "Events" } dd { (webhook.events.join(", ")) }
            @if let Some(inbox) = webhook.inbox_id { dt { "Inbox" } dd { (inbox) } }
            dt { "Status" } dd { (status_words(webhook)) }
            dt { "Last attempt" } dd { (last_attempt(&health.measured)) }
            dt { "Success rate (24 h)" } dd { (success_rate(&health.measured)) }
            @if let (Some(p50), Some(p99)) = (health.measured.latency_p50_ms_24h, health.measured.latency_p99_ms_24h) {
                dt { "Latency (24 h)" } dd { "median ≤ " (p50) " ms, 99th percentile ≤ " (p99) " ms" }
            }
            dt { "Circuit" } dd { (circuit(health)) }
            @if let Some(failing) = failing(&health.measured) { dt { "Failing" } dd { (failing) } }
        }
        div .actions {
            a .button href={ (base) "/edit" } { "Edit" }
            form method="post" action={ (base) "/enabled" } {
                (csrf(token))
                input type="hidden" name="enabled" value=(!webhook.enabled);
                button type="submit" { @if webhook.enabled { "Disable" } @else { "Enable" } }
            }
            form method="post" action={ (base) "/rotate" } data-confirm=(ROTATE_QUESTION) {
                (csrf(token))
                button type="submit" { "Rotate secret" }
            }
            form method="post" action={ (base) "/delete" } data-confirm=(DELETE_QUESTION) {
                (csrf(token))
                button .danger type="submit" { "Delete" }
            }
            a href={ "/ui/dead-letters?webhook=" (webhook.id) } { "Dead letters" }
        }
        form .filters method="post" action={ (base) "/test" } {
            (csrf(token))
            div .field {
                label for="test-event" { "Event" }
                select #test-event name="event" {
                    @for event in KNOWN_EVENTS {
                        option value=(event) selected[event == DEFAULT_TEST_EVENT] { (event) }
                    }
                }
            }
            button type="submit" { "Send test event" }
            small { "A signed sample, sent once now; logged below as " code { (TEST_OUTCOME) } "." }
        }
        h2 { "Attempts" }
        @if shown.is_empty() {
            p { "No attempts yet." }
        } @else {
            div .table-wrap {
                table #attempts {
                    caption .visually-hidden { "Delivery attempts, newest first" }
                    (head_row(&["Time", "Delivery id", "Attempt", "Status or error", "Latency", "Outcome"]))
                    tbody {
                        @for a in shown {
                            tr {
                                td { (a.at) }
                                td { code { (a.delivery_id) } }
                                td { (a.attempt) }
                                td { (a.status.map(|s| s.to_string()).or_else(|| a.error.clone()).unwrap_or_default()) }
                                td { (a.latency_ms) " ms" }
                                td { span .badge.(outcome_class(a)) { (a.outcome) } }
                            }
                        }
                    }
                }
            }
        }
        (pager(&base, "?", offset, more))
    }
}

/// A table's header row; an empty heading is the selection column's, named for screen readers.
fn head_row(headings: &[&str]) -> Markup {
    html! {
        thead { tr {
            @for heading in headings {
                th scope="col" {
                    @if heading.is_empty() { span .visually-hidden { "Select" } } @else { (heading) }
                }
            }
        } }
    }
}

fn pager(base: &str, join: &str, offset: usize, more: bool) -> Markup {
    let rows = super::PAGE_ROWS;
    html! {
        nav .pager aria-label="Pages" {
            @if offset > 0 {
                a href={ (base) (join) "offset=" (offset.saturating_sub(rows)) } rel="prev" { "Previous page" }
            }
            @if more {
                a href={ (base) (join) "offset=" (offset + rows) } rel="next" { "Next page" }
            }
        }
    }
}

pub fn confirm(
    question: &str,
    action: &str,
    yes: &str,
    back: &str,
    fields: &[(String, String)],
) -> Markup {
    html! {
        h1 { "Confirm" }
        form .confirm method="post" action=(action) {
            p { (question) }
            @for (name, value) in fields.iter().filter(|(n, _)| n != "confirmed") {
                input type="hidden" name=(name) value=(value);
            }
            input type="hidden" name="confirmed" value="yes";
            div .actions {
                button .danger type="submit" { (yes) }
                a href=(back) { "Cancel" }
            }
        }
    }
}

pub fn dead_letters(
    token: &str,
    principal: Principal,
    query: &Form,
    entries: &[Entry],
    offset: usize,
) -> Markup {
    let (shown, more) = page_of(entries, offset);
    let value = |name| query.get(name).filter(|v| !v.is_empty());
    let chosen = value("reason");
    let mut base = String::from("/ui/dead-letters?");
    for (name, v) in query.pairs.iter().filter(|(n, _)| n != "offset") {
        base.push_str(&format!("{}={}&", super::encode(name), super::encode(v)));
    }
    let base = base.trim_end_matches('&').to_owned();
    html! {
        h1 { "Dead letters" }
        form .filters method="get" action="/ui/dead-letters" {
            @if principal == Principal::Operator {
                div .field { label for="f-account" { "Account id" } input #f-account name="account" inputmode="numeric" value=[value("account")]; }
            }
            div .field { label for="f-webhook" { "Webhook id" } input #f-webhook name="webhook" value=[value("webhook")]; }
            div .field {
                label for="f-reason" { "Reason" }
                select #f-reason name="reason" {
                    option value="" { "Any" }
                    @for reason in ALL_REASONS {
                        option value=(reason.as_str()) selected[chosen == Some(reason.as_str())] { (reason.as_str()) }
                    }
                }
            }
            div .field { label for="f-event" { "Event" } input #f-event name="event" value=[value("event")]; }
            div .field { label for="f-since" { "Since (time or age, e.g. 2h)" } input #f-since name="since" value=[value("since")]; }
            button type="submit" { "Filter" }
        }
        @if shown.is_empty() {
            p { "No dead letters match." }
        } @else {
            form #dead-letters method="post" action="/ui/dead-letters/replay" data-confirm=(REPLAY_QUESTION) {
                (csrf(token))
                @for (name, v) in query.pairs.iter().filter(|(n, _)| n != "offset") {
                    input type="hidden" name=(name) value=(v);
                }
                div .table-wrap {
                    table {
                        caption .visually-hidden { "Dead letters, oldest first" }
                        (head_row(&["", "Dead at", "Reason", "Webhook", "Event", "Attempts", "Last status or error"]))
                        tbody {
                            @for (i, e) in shown.iter().enumerate() {
                                tr {
                                    td {
                                        input type="checkbox" name="id" value=(e.id) id={ "dl-" (i) };
                                        label .visually-hidden for={ "dl-" (i) } { "Select " (e.id) }
                                    }
                                    td { (e.dead_at.as_deref().unwrap_or("-")) }
                                    td { span .badge.bad { (e.reason) } }
                                    td { @match &e.webhook_id {
                                        Some(w) => a href={ "/ui/webhooks/" (w) } { code { (w) } },
                                        None => "-",
                                    } }
                                    td { (e.event.as_deref().unwrap_or("-")) }
                                    td { (e.attempts) }
                                    td { (e.last_status.map(|s| s.to_string()).or_else(|| e.last_error.clone()).unwrap_or_else(|| "-".into())) }
                                }
                            }
                        }
                    }
                }
                fieldset .actions {
                    legend { "Act on" }
                    div .check { input #scope-selected type="radio" name="scope" value="selected" checked; label for="scope-selected" { "the selected dead letters" } }
                    div .check { input #scope-filtered type="radio" name="scope" value="filtered"; label for="scope-filtered" { "every dead letter matching the filter" } }
                    button type="submit" { "Replay" }
                    button .danger type="submit" formaction="/ui/dead-letters/purge" data-confirm=(PURGE_QUESTION) { "Purge" }
                }
            }
        }
        (pager(&base, "&", offset, more))
    }
}

pub fn overview(
    not_ready: Option<&str>,
    gauges: &Gauges,
    dead_letters: Result<u32, String>,
    accounts: usize,
) -> Markup {
    html! {
        h1 { "Overview" }
        dl .facts {
            dt { "Broker connection" }
            dd { @if gauges.broker_connected { span .badge.ok { "Connected" } } @else { span .badge.bad { "Not connected" } } }
            dt { "Readiness" }
            dd { @match not_ready {
                None => span .badge.ok { "Ready" },
                Some(why) => { span .badge.bad { "Not ready" } " " (why) },
            } }
            dt { "Deliveries in flight" } dd { (gauges.in_flight) }
            dt { "Circuits open" } dd { (gauges.circuits_open) }
            dt { "Dead letters" }
            dd { @match dead_letters {
                Ok(depth) => a href="/ui/dead-letters" { (depth) },
                Err(why) => span .error { "Unknown: " (why) },
            } }
            dt { "Accounts with webhooks" } dd { (accounts) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured() -> lifecycle::Health {
        lifecycle::Health {
            last_success_at: None,
            last_success_status: None,
            last_failure_at: None,
            last_failure_status: None,
            last_failure_error: None,
            consecutive_failures: 0,
            failing_since: None,
            attempts_24h: 0,
            success_rate_24h: None,
            latency_p50_ms_24h: None,
            latency_p99_ms_24h: None,
            circuit: Circuit::Closed,
        }
    }

    fn cell(measured: lifecycle::Health, circuit_open_for: Option<Duration>) -> String {
        health_cell(&Health {
            measured,
            circuit_open_for,
        })
        .into_string()
    }

    #[test]
    fn a_test_event_is_told_in_words_with_its_status_or_error() {
        let trial = Trial {
            webhook_id: "wh_1".into(),
            event: "message_created".into(),
            delivery_id: "d1".into(),
            status: Some(200),
            latency_ms: 12,
            error: None,
            ok: true,
        };
        assert_eq!(
            trial_words(&trial),
            "Test event delivered: 200 in 12 ms (message_created, delivery d1)."
        );
        let refused = Trial {
            status: None,
            error: Some("connection refused".into()),
            ok: false,
            ..trial.clone()
        };
        let words = trial_words(&refused);
        assert!(words.starts_with("Test event failed: connection refused in 12 ms"));
        let failed = Trial {
            status: Some(503),
            ok: false,
            ..trial
        };
        assert!(trial_words(&failed).starts_with("Test event failed: 503 in 12 ms"));
    }

    #[test]
    fn the_health_cell_says_in_words_what_the_last_attempt_the_day_and_the_circuit_were() {
        assert!(cell(measured(), None).contains("No attempts yet"));

        let delivered = lifecycle::Health {
            last_success_at: Some("2026-01-01T10:00:01.000Z".into()),
            last_success_status: Some(204),
            last_failure_at: Some("2026-01-01T10:00:00.000Z".into()),
            last_failure_status: Some(503),
            attempts_24h: 1000,
            success_rate_24h: Some(0.9996),
            ..measured()
        };
        let shown = cell(delivered.clone(), None);
        for words in [
            "Delivered: 204",
            "99.9% of 1000 succeeded",
            "Circuit closed",
        ] {
            assert!(shown.contains(words), "{words} in {shown}");
        }

        let failing = lifecycle::Health {
            last_failure_at: Some("2026-01-01T10:00:02.000Z".into()),
            last_failure_status: None,
            last_failure_error: Some("connection refused".into()),
            failing_since: Some("2026-01-01T10:00:02.000Z".into()),
            consecutive_failures: 3,
            circuit: Circuit::Open,
            ..delivered
        };
        let shown = cell(failing, Some(Duration::from_secs(30)));
        for words in [
            "Failed: connection refused",
            "Circuit open",
            "for 30s",
            "3 failed attempts in a row",
        ] {
            assert!(shown.contains(words), "{words} in {shown}");
        }
    }
}
