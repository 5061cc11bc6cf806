//! The web console at `/ui/`: the account's webhooks, their attempts and the dead letters, in a
//! browser, served by the admin server on its own listener, under its limits.
//!
//! Pages are rendered on the server (`console/views.rs`, maud templates checked by the compiler),
//! and every action is a plain form POST answered with a redirect to a page (POST-redirect-GET),
//! so all of it works without JavaScript; one small script only adds copy buttons, the token's
//! reveal toggle and confirmation dialogs. A destructive action posted without `confirmed=yes`
//! answers with a confirmation page instead of acting, which is what the dialog skips.
//!
//! Sign-in takes the admin token (the operator: every account) or an account token (one
//! account), the same credentials `/v1` takes, and exchanges it for a session
//! (`console/session.rs`). What an account may see is decided by [`Principal::sees`], as in the
//! API: another account's webhook is answered as if it did not exist.
//!
//! The console is reached by browsers, which `/v1` is not, so each request is checked before it
//! is routed:
//! - `Host` must be an IP literal, `localhost` or one of `admin.console_hosts`: a page from a DNS
//!   name an attacker rebinds to this address sends its own name, and is refused (421).
//! - A POST must come from this origin (`Origin`, else `Sec-Fetch-Site`) and carry the CSRF
//!   token: the session's, or before sign-in the one set in a cookie with the form.
//! - Every answer forbids framing, sniffing and caching, and its Content-Security-Policy allows
//!   only this origin's own script and stylesheet, with no inline code.

mod session;
mod views;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use hyper::body::Incoming;
use lapin::types::ShortString;
use maud::Markup;
use tracing::{info, warn};

use self::session::{random_token, same_secret, Flash, Session, Sessions};
use self::views::{Health, Page};
use crate::admin::{self, AdminState, Principal, Reply};
use crate::broker::{self, Receives, Topology};
use crate::config::{BrokerConfig, Config};
use crate::delivery::DeadReason;
use crate::dlq::{self, Action, Filter};
use crate::lifecycle::{check_event, DEFAULT_TEST_EVENT};
use crate::registry::RegistryError;
use crate::store::{Cursor, NewWebhook, StoreError, Webhook, WebhookPatch};

/// The session cookie; the token never goes into a cookie.
const SESSION_COOKIE: &str = "webhookd_session";
/// The sign-in form's CSRF cookie, before there is a session to hold the token.
const SIGN_IN_COOKIE: &str = "webhookd_sign_in";

/// Rows on one page of a list.
pub(crate) const PAGE_ROWS: usize = 50;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const SCRIPT: &str = include_str!("console/assets/console.js");
const STYLE: &str = include_str!("console/assets/console.css");

/// The console's sessions and the settings it was started with.
pub struct Console {
    sessions: Sessions,
    hosts: Vec<String>,
    broker: BrokerConfig,
}

impl Console {
    pub fn new(config: &Config) -> Console {
        Console {
            sessions: Sessions::new(
                config.admin.session_idle_timeout,
                config.admin.session_max_age,
            ),
            hosts: config
                .admin
                .console_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            broker: config.broker.clone(),
        }
    }
}

/// Answers a request under `/ui`.
pub async fn route(state: &AdminState, request: Request<Incoming>) -> Reply {
    let mut reply = match checked(state, request).await {
        Ok(reply) | Err(reply) => reply,
    };
    let headers = reply.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    reply
}

/// A request as the console sees it once its Host and origin are checked.
struct Visit {
    method: Method,
    path: String,
    query: String,
    cookies: Vec<(String, String)>,
    /// The session and its id, if the cookie names a live one.
    session: Option<(String, Session)>,
    form: Form,
}

async fn checked(state: &AdminState, request: Request<Incoming>) -> Result<Reply, Reply> {
    let console = &state.console;
    if !host_allowed(request.headers(), &console.hosts) {
        return Err(text(
            StatusCode::MISDIRECTED_REQUEST,
            "this host name is not one the console answers to (admin.console_hosts)\n",
        ));
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if method == Method::GET {
        match path.as_str() {
            "/ui/assets/console.js" => return Ok(asset("text/javascript; charset=utf-8", SCRIPT)),
            "/ui/assets/console.css" => return Ok(asset("text/css; charset=utf-8", STYLE)),
            _ => {}
        }
    }
    if method == Method::POST && !same_origin(request.headers()) {
        return Err(text(
            StatusCode::FORBIDDEN,
            "refused: the form was not posted from this console's own pages\n",
        ));
    }
    let cookies = cookies(request.headers());
    let session = cookie(&cookies, SESSION_COOKIE).and_then(|id| {
        console
            .sessions
            .touch(id, Instant::now())
            .map(|s| (id.to_owned(), s))
    });
    let query = request.uri().query().unwrap_or("").to_owned();
    let form = match method {
        Method::POST => Form::parse(
            &admin::read_body(request)
                .await
                .map_err(admin::ApiError::into_reply)?,
        ),
        _ => Form::default(),
    };
    let visit = Visit {
        method,
        path,
        query,
        cookies,
        session,
        form,
    };
    Ok(answer(state, visit).await)
}

async fn answer(state: &AdminState, visit: Visit) -> Reply {
    let segments: Vec<&str> = visit.path.trim_matches('/').split('/').skip(1).collect();
    match (&visit.method, segments.as_slice()) {
        (&Method::GET, [] | [""]) if visit.session.is_some() => redirect("/ui/webhooks"),
        (&Method::GET, [] | [""]) => sign_in_page(None, StatusCode::OK),
        (&Method::POST, ["sign-in"]) => sign_in(state, &visit),
        _ => {
            let Some((id, session)) = &visit.session else {
                // No session, or an expired one: back to sign-in, whatever was asked.
                return redirect("/ui/");
            };
            if visit.method == Method::POST
                && !visit
                    .form
                    .get("csrf")
                    .is_some_and(|given| same_secret(given, &session.csrf))
            {
                return text(
                    StatusCode::FORBIDDEN,
                    "refused: the form's CSRF token is missing or stale; reload the page\n",
                );
            }
            let signed_in = SignedIn {
                state,
                id,
                session,
                visit: &visit,
            };
            signed_in.route(&segments).await
        }
    }
}

/// A request from a live session.
struct SignedIn<'a> {
    state: &'a AdminState,
    id: &'a str,
    session: &'a Session,
    visit: &'a Visit,
}

impl SignedIn<'_> {
    async fn route(&self, segments: &[&str]) -> Reply {
        let principal = self.session.principal;
        let result = match (&self.visit.method, segments) {
            (&Method::POST, ["sign-out"]) => {
                self.state.console.sessions.end(self.id);
                let mut reply = redirect("/ui/");
                set_cookie(&mut reply, &expired_cookie(SESSION_COOKIE));
                return reply;
            }
            (&Method::GET, ["webhooks"]) => self.webhooks(),
            (&Method::GET, ["webhooks", "new"]) => Ok(self.page(views::webhook_form(
                &self.session.csrf,
                principal,
                None,
                None,
            ))),
            (&Method::POST, ["webhooks"]) => self.create().await,
            (&Method::GET, ["webhooks", id]) => self.webhook(id),
            (&Method::GET, ["webhooks", id, "edit"]) => self.owned(id).map(|webhook| {
                self.page(views::webhook_form(
                    &self.session.csrf,
                    principal,
                    Some(&webhook),
                    None,
                ))
            }),
            (&Method::POST, ["webhooks", id]) => self.update(id).await,
            (&Method::POST, ["webhooks", id, "enabled"]) => self.set_enabled(id).await,
            (&Method::POST, ["webhooks", id, "rotate"]) => self.rotate(id).await,
            (&Method::POST, ["webhooks", id, "test"]) => self.send_test_event(id).await,
            (&Method::POST, ["webhooks", id, "delete"]) => self.delete(id).await,
            (&Method::GET, ["dead-letters"]) => self.dead_letters().await,
            (&Method::POST, ["dead-letters", verb @ ("replay" | "purge")]) => {
                self.act_on_dead_letters(verb).await
            }
            (&Method::GET, ["overview"]) if principal == Principal::Operator => {
                self.overview().await
            }
            _ => Err(Problem::NotFound),
        };
        match result {
            Ok(reply) => reply,
            Err(problem) => self.problem(problem),
        }
    }

    fn page(&self, body: Markup) -> Reply {
        html(StatusCode::OK, self.render(body))
    }

    fn render(&self, body: Markup) -> Markup {
        views::layout(
            &Page {
                principal: self.session.principal,
                csrf: &self.session.csrf,
                flash: self.session.flash.as_ref(),
            },
            body,
        )
    }

    fn problem(&self, problem: Problem) -> Reply {
        let (status, message) = match problem {
            Problem::NotFound => (StatusCode::NOT_FOUND, "Not found.".to_owned()),
            Problem::Invalid(message) => (StatusCode::BAD_REQUEST, message),
            Problem::Failed(message) => {
                warn!(%message, "console request failed");
                // The operator reads the cause; an account's user is not shown the daemon's
                // internals.
                let shown = match self.session.principal {
                    Principal::Operator => message,
                    Principal::Account(_) => {
                        "Something failed on the server: try again, or ask the operator.".to_owned()
                    }
                };
                (StatusCode::INTERNAL_SERVER_ERROR, shown)
            }
        };
        html(status, self.render(views::problem(&message)))
    }

    /// Webhook `id` if this session may see it: another account's is not found.
    fn owned(&self, id: &str) -> Result<Webhook, Problem> {
        self.state
            .webhook_for(self.session.principal, id)?
            .ok_or(Problem::NotFound)
    }

    fn query(&self, name: &str) -> Option<&str> {
        admin::query_param(&self.visit.query, name).filter(|v| !v.is_empty())
    }

    fn webhooks(&self) -> Result<Reply, Problem> {
        let principal = self.session.principal;
        let asked = self.query("account").map(parse_account).transpose()?;
        if asked.is_some_and(|account| !principal.sees(account)) {
            return Err(Problem::NotFound);
        }
        let after = self
            .query("after")
            .map(|c| decode(c).parse::<Cursor>())
            .transpose()
            .map_err(|e| Problem::Invalid(e.to_string()))?;
        let (webhooks, next) =
            self.state
                .registry
                .store()
                .page(principal.scope(asked), after.as_ref(), PAGE_ROWS)?;
        let rows: Vec<(Webhook, Health)> = webhooks
            .into_iter()
            .map(|webhook| {
                let health = self.health(&webhook);
                (webhook, health)
            })
            .collect();
        let next = next.map(|cursor| {
            let mut link = format!("/ui/webhooks?after={}", encode(&cursor.to_string()));
            if let Some(account) = asked {
                link.push_str(&format!("&account={account}"));
            }
            link
        });
        Ok(self.page(views::webhooks(
            principal,
            asked,
            &rows,
            after.is_some(),
            next.as_deref(),
        )))
    }

    /// How the webhook fares, from the daemon's memory: no read of the store per row, so the
    /// Webhooks page stays fast with deliveries running.
    fn health(&self, webhook: &Webhook) -> Health {
        Health {
            measured: self.state.monitor.health(webhook),
            circuit_open_for: self.state.circuits.open_for(&webhook.url),
        }
    }

    async fn create(&self) -> Result<Reply, Problem> {
        let form = &self.visit.form;
        let account_id = match self.session.principal {
            Principal::Account(own) => own,
            Principal::Operator => match form.get("account_id").map(parse_account) {
                Some(account) => account?,
                None => return Err(Problem::Invalid("Account id is required.".into())),
            },
        };
        let new = NewWebhook {
            account_id,
            url: form.get("url").unwrap_or_default().trim().to_owned(),
            events: form.events(),
            inbox_id: form.inbox()?,
            secret: Some(crate::delivery::sign::generate_secret()),
            name: form.name(),
            ..NewWebhook::default()
        };
        match self.state.registry.create(new).await {
            Ok(webhook) => {
                info!(webhook_id = %webhook.id, account_id, "webhook created in the console");
                self.show_secret_once(&webhook);
                Ok(redirect(&format!("/ui/webhooks/{}", webhook.id)))
            }
            Err(RegistryError::Store(StoreError::Invalid { field, message })) => Ok(html(
                StatusCode::BAD_REQUEST,
                self.render(views::webhook_form(
                    &self.session.csrf,
                    self.session.principal,
                    None,
                    Some(&format!("{}: {message}", views::label_of(field))),
                )),
            )),
            Err(error) => Err(error.into()),
        }
    }

    fn show_secret_once(&self, webhook: &Webhook) {
        if let Some(secret) = &webhook.secret {
            self.state.console.sessions.flash(
                self.id,
                Flash::Secret {
                    webhook_id: webhook.id.clone(),
                    secret: secret.clone(),
                },
            );
        }
    }

    fn notice(&self, text: String) {
        self.state
            .console
            .sessions
            .flash(self.id, Flash::Notice(text));
    }

    fn webhook(&self, id: &str) -> Result<Reply, Problem> {
        let webhook = self.owned(id)?;
        let offset = self.offset();
        let attempts = self
            .state
            .registry
            .store()
            .attempts(id, offset + PAGE_ROWS + 1)?;
        let health = self.health(&webhook);
        Ok(self.page(views::webhook(
            &self.session.csrf,
            &webhook,
            &health,
            &attempts,
            offset,
        )))
    }

    fn offset(&self) -> usize {
        self.query("offset")
            .and_then(|o| o.parse().ok())
            .unwrap_or(0)
    }

    async fn update(&self, id: &str) -> Result<Reply, Problem> {
        let webhook = self.owned(id)?;
        let form = &self.visit.form;
        let patch = WebhookPatch {
            url: Some(form.get("url").unwrap_or_default().trim().to_owned()),
            events: Some(form.events()),
            inbox_id: Some(form.inbox()?),
            name: Some(form.name()),
            ..WebhookPatch::default()
        };
        match self.state.registry.update(id, &patch).await {
            Ok(Some(_)) => {
                self.notice("Webhook updated.".into());
                Ok(redirect(&format!("/ui/webhooks/{id}")))
            }
            Ok(None) => Err(Problem::NotFound),
            Err(RegistryError::Store(StoreError::Invalid { field, message })) => Ok(html(
                StatusCode::BAD_REQUEST,
                self.render(views::webhook_form(
                    &self.session.csrf,
                    self.session.principal,
                    Some(&webhook),
                    Some(&format!("{}: {message}", views::label_of(field))),
                )),
            )),
            Err(error) => Err(error.into()),
        }
    }

    async fn set_enabled(&self, id: &str) -> Result<Reply, Problem> {
        self.owned(id)?;
        let enabled = self.visit.form.get("enabled") == Some("true");
        self.state
            .registry
            .set_enabled(id, enabled)
            .await?
            .ok_or(Problem::NotFound)?;
        self.notice(if enabled {
            "Webhook enabled.".into()
        } else {
            "Webhook disabled: nothing is delivered to it until it is enabled again.".into()
        });
        Ok(redirect(&format!("/ui/webhooks/{id}")))
    }

    /// The confirmation page for `question` if the form was not confirmed yet.
    fn unconfirmed(&self, question: &str, action: &str, yes: &str, back: &str) -> Option<Reply> {
        (self.visit.form.get("confirmed") != Some("yes")).then(|| {
            self.page(views::confirm(
                question,
                action,
                yes,
                back,
                &self.visit.form.pairs,
            ))
        })
    }

    async fn rotate(&self, id: &str) -> Result<Reply, Problem> {
        self.owned(id)?;
        let back = format!("/ui/webhooks/{id}");
        if let Some(confirm) = self.unconfirmed(
            views::ROTATE_QUESTION,
            &format!("/ui/webhooks/{id}/rotate"),
            "Rotate secret",
            &back,
        ) {
            return Ok(confirm);
        }
        let rotated = admin::rotate_secret(self.state, id)
            .await?
            .ok_or(Problem::NotFound)?;
        self.show_secret_once(&rotated);
        Ok(redirect(&back))
    }

    /// Sends the webhook a sample of the chosen event now, as `POST /v1/webhooks/{id}/test`
    /// does, and shows what the receiver answered once on the webhook's page.
    async fn send_test_event(&self, id: &str) -> Result<Reply, Problem> {
        let webhook = self.owned(id)?;
        let event = self.visit.form.get("event").unwrap_or(DEFAULT_TEST_EVENT);
        check_event(event).map_err(Problem::Invalid)?;
        let trial = admin::send_test_event(self.state, &webhook, event).await;
        self.state
            .console
            .sessions
            .flash(self.id, Flash::Trial(trial));
        Ok(redirect(&format!("/ui/webhooks/{id}")))
    }

    async fn delete(&self, id: &str) -> Result<Reply, Problem> {
        let webhook = self.owned(id)?;
        if let Some(confirm) = self.unconfirmed(
            views::DELETE_QUESTION,
            &format!("/ui/webhooks/{id}/delete"),
            "Delete webhook",
            &format!("/ui/webhooks/{id}"),
        ) {
            return Ok(confirm);
        }
        if !self.state.registry.delete(id).await? {
            return Err(Problem::NotFound);
        }
        info!(webhook_id = %id, "webhook deleted in the console");
        self.notice(format!("Deleted the webhook to {}.", webhook.url));
        Ok(redirect("/ui/webhooks"))
    }

    /// The dead-letter filter the page's query or form asks for, narrowed to what this session
    /// may see.
    fn dead_letter_filter(&self, fields: &Form) -> Result<Filter, Problem> {
        let reason = fields
            .get("reason")
            .filter(|r| !r.is_empty())
            .map(str::parse::<DeadReason>)
            .transpose()
            .map_err(|e| Problem::Invalid(e.to_string()))?;
        let since = fields
            .get("since")
            .filter(|s| !s.is_empty())
            .map(parse_since)
            .transpose()?;
        let account_id = self.session.principal.scope(
            fields
                .get("account")
                .filter(|a| !a.is_empty())
                .map(parse_account)
                .transpose()?,
        );
        Ok(Filter {
            account_id,
            webhook_id: fields.non_empty("webhook"),
            reason,
            event: fields.non_empty("event"),
            since,
            ..Filter::default()
        })
    }

    async fn dead_letters(&self) -> Result<Reply, Problem> {
        let query = Form::parse(self.visit.query.as_bytes());
        let filter = self.dead_letter_filter(&query)?;
        let offset = self.offset();
        let entries = self
            .with_broker(|connection, topology| async move {
                dlq::scan(
                    &connection,
                    &topology,
                    &filter,
                    Some(offset + PAGE_ROWS + 1),
                    Action::Look,
                    false,
                    dlq::PATIENCE,
                )
                .await
            })
            .await?;
        Ok(self.page(views::dead_letters(
            &self.session.csrf,
            self.session.principal,
            &query,
            &entries,
            offset,
        )))
    }

    async fn act_on_dead_letters(&self, verb: &str) -> Result<Reply, Problem> {
        let form = &self.visit.form;
        let mut filter = self.dead_letter_filter(form)?;
        let selected = form.all("id");
        let scope = form.get("scope").unwrap_or("selected");
        if scope == "selected" {
            if selected.is_empty() {
                return Err(Problem::Invalid(
                    "Select at least one dead letter, or act on all that match the filter.".into(),
                ));
            }
            filter.ids = selected;
        }
        let (question, yes, action) = match verb {
            "replay" => (views::REPLAY_QUESTION, "Replay", Action::Replay),
            _ => (views::PURGE_QUESTION, "Purge", Action::Purge),
        };
        if let Some(confirm) = self.unconfirmed(
            question,
            &format!("/ui/dead-letters/{verb}"),
            yes,
            "/ui/dead-letters",
        ) {
            return Ok(confirm);
        }
        if action == Action::Replay {
            filter.exclude_webhooks = self.undeliverable(&filter).await?;
        }
        let held = filter.exclude_webhooks.len();
        let done = self
            .with_broker(|connection, topology| async move {
                dlq::scan(
                    &connection,
                    &topology,
                    &filter,
                    None,
                    action,
                    false,
                    dlq::PATIENCE,
                )
                .await
            })
            .await?;
        info!(
            count = done.len(),
            action = verb,
            "dead letters acted on in the console"
        );
        let mut notice = match action {
            Action::Replay => format!("Replayed {} dead letter(s).", done.len()),
            _ => format!("Purged {} dead letter(s).", done.len()),
        };
        if held > 0 {
            notice.push_str(&format!(
                " Left in place those of {held} webhook(s) that are disabled or deleted."
            ));
        }
        self.notice(notice);
        Ok(redirect("/ui/dead-letters"))
    }

    /// The webhooks among the selected dead letters that a replay would not reach: disabled
    /// (the daemon parks their jobs again) or deleted (it drops them).
    async fn undeliverable(&self, filter: &Filter) -> Result<HashSet<String>, Problem> {
        let selected = self
            .with_broker(|connection, topology| async move {
                dlq::scan(
                    &connection,
                    &topology,
                    filter,
                    None,
                    Action::Look,
                    false,
                    dlq::PATIENCE,
                )
                .await
            })
            .await?;
        let mut held = HashSet::new();
        for webhook_id in selected.iter().filter_map(|e| e.webhook_id.as_deref()) {
            if !self
                .state
                .registry
                .store()
                .get(webhook_id)?
                .is_some_and(|w| w.enabled)
            {
                held.insert(webhook_id.to_owned());
            }
        }
        Ok(held)
    }

    /// Runs `work` on a broker connection of its own, closed afterwards.
    async fn with_broker<'f, T, F, Fut>(&self, work: F) -> Result<T, Problem>
    where
        F: FnOnce(Arc<lapin::Connection>, Topology) -> Fut,
        Fut: std::future::Future<Output = Result<T, broker::BrokerError>> + 'f,
    {
        let config = &self.state.console.broker;
        // Any node of `broker.urls` will do: the dead-letter queue is a cluster's.
        let (connection, _) = broker::connect(config, 0, "console", Receives::Messages)
            .await
            .map_err(|e| Problem::Failed(format!("The broker is not reachable: {e}")))?;
        let connection = Arc::new(connection);
        let result = work(connection.clone(), Topology::from_config(config)).await;
        let _ = connection.close(200, ShortString::from("done")).await;
        result.map_err(|e| Problem::Failed(format!("The broker refused: {e}")))
    }

    async fn overview(&self) -> Result<Reply, Problem> {
        let depth = self
            .with_broker(
                |connection, topology| async move { dlq::depth(&connection, &topology).await },
            )
            .await;
        let webhooks = self.state.registry.store().index_size();
        Ok(self.page(views::overview(
            self.state.readiness.reason().as_deref(),
            &self.state.metrics.gauges(),
            depth.map_err(|problem| match problem {
                Problem::Failed(why) | Problem::Invalid(why) => why,
                Problem::NotFound => "not found".to_owned(),
            }),
            webhooks.accounts,
        )))
    }
}

/// Why a console request could not be answered with its page.
enum Problem {
    NotFound,
    /// The request asks for something malformed; the text says what, for a person.
    Invalid(String),
    /// The store or the broker failed.
    Failed(String),
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Problem {
        match error {
            StoreError::Invalid { field, message } => {
                Problem::Invalid(format!("{}: {message}", views::label_of(field)))
            }
            StoreError::Conflict => Problem::Invalid(
                "The webhook was changed meanwhile: reload the page and try again.".to_owned(),
            ),
            other => Problem::Failed(other.to_string()),
        }
    }
}

impl From<RegistryError> for Problem {
    fn from(error: RegistryError) -> Problem {
        match error {
            RegistryError::Store(error) => error.into(),
            unavailable => Problem::Failed(unavailable.to_string()),
        }
    }
}

fn sign_in(state: &AdminState, visit: &Visit) -> Reply {
    let expected = cookie(&visit.cookies, SIGN_IN_COOKIE);
    let given = visit.form.get("csrf");
    if !matches!((expected, given), (Some(e), Some(g)) if same_secret(e, g)) {
        return text(
            StatusCode::FORBIDDEN,
            "refused: the sign-in form's CSRF token is missing or stale; reload the page\n",
        );
    }
    let token = visit.form.get("token").unwrap_or_default().trim();
    let Some(principal) = state.principal_of(token) else {
        return sign_in_page(
            Some("That token is not valid: check it, or ask for a new one."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let id = state.console.sessions.start(principal, Instant::now());
    match principal {
        Principal::Operator => info!("console sign-in with the admin token"),
        Principal::Account(account_id) => {
            info!(account_id, "console sign-in with an account token")
        }
    }
    let mut reply = redirect("/ui/webhooks");
    set_cookie(
        &mut reply,
        &format!("{SESSION_COOKIE}={id}; Path=/ui/; HttpOnly; SameSite=Strict"),
    );
    set_cookie(&mut reply, &expired_cookie(SIGN_IN_COOKIE));
    reply
}

/// The sign-in page, with a fresh CSRF token in its form and in a cookie to match.
fn sign_in_page(error: Option<&str>, status: StatusCode) -> Reply {
    let csrf = random_token();
    let mut reply = html(status, views::sign_in(&csrf, error));
    set_cookie(
        &mut reply,
        &format!("{SIGN_IN_COOKIE}={csrf}; Path=/ui/; HttpOnly; SameSite=Strict"),
    );
    reply
}

/// Whether the `Host` header names this console: an IP literal (no DNS to rebind), `localhost`,
/// or a configured name.
fn host_allowed(headers: &http::HeaderMap, configured: &[String]) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.split(':').next().unwrap_or_default(),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok() || name == "localhost" || configured.contains(&host)
}

/// Whether a POST comes from the console's own pages: `Origin` (sent by browsers with every
/// form POST) must name this host; without it, `Sec-Fetch-Site` must not say another site. A
/// client that sends neither is no browser, and still needs the CSRF token.
fn same_origin(headers: &http::HeaderMap) -> bool {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(origin) = get(header::ORIGIN) {
        let host = get(header::HOST).unwrap_or_default();
        let bare = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        return bare.is_some_and(|o| o.eq_ignore_ascii_case(host));
    }
    match headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        Some(site) => matches!(site, "same-origin" | "none"),
        None => true,
    }
}

fn cookies(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn cookie<'a>(cookies: &'a [(String, String)], name: &str) -> Option<&'a str> {
    cookies
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn expired_cookie(name: &str) -> String {
    format!("{name}=; Path=/ui/; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn set_cookie(reply: &mut Reply, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        reply.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The 303 of POST-redirect-GET (and of every page asked for without a session).
fn redirect(to: &str) -> Reply {
    let mut reply = admin::with_body(StatusCode::SEE_OTHER, "text/plain", Bytes::new());
    if let Ok(value) = HeaderValue::from_str(to) {
        reply.headers_mut().insert(header::LOCATION, value);
    }
    reply
}

fn html(status: StatusCode, markup: Markup) -> Reply {
    admin::with_body(
        status,
        "text/html; charset=utf-8",
        markup.into_string().into(),
    )
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    admin::with_body(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Reply {
    admin::with_body(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    )
}

/// A form body (or a query string): its fields in order, repeated names kept.
#[derive(Debug, Default)]
pub(crate) struct Form {
    pub(crate) pairs: Vec<(String, String)>,
}

impl Form {
    fn parse(bytes: &[u8]) -> Form {
        Form {
            pairs: form_urlencoded::parse(bytes).into_owned().collect(),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn non_empty(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// The checked events; none checked is left for validation to refuse.
    fn events(&self) -> Vec<String> {
        self.all("events")
    }

    fn name(&self) -> Option<String> {
        self.non_empty("name")
    }

    fn inbox(&self) -> Result<Option<u64>, Problem> {
        self.non_empty("inbox_id")
            .map(|inbox| {
                inbox.parse::<u64>().ok().filter(|&i| i > 0).ok_or_else(|| {
                    Problem::Invalid(format!(
                        "Inbox id must be a positive whole number, not {inbox:?}."
                    ))
                })
            })
            .transpose()
    }
}

fn parse_account(text: &str) -> Result<u64, Problem> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|&a| a > 0)
        .ok_or_else(|| {
            Problem::Invalid(format!(
                "Account id must be a positive whole number, not {text:?}."
            ))
        })
}

/// A time filter: RFC 3339, or an age such as `2h`.
fn parse_since(text: &str) -> Result<SystemTime, Problem> {
    humantime::parse_rfc3339_weak(text.trim())
        .or_else(|_| humantime::parse_duration(text.trim()).map(|age| SystemTime::now() - age))
        .map_err(|_| {
            Problem::Invalid(format!(
                "Since must be a time (2026-11-25T10:00:00Z) or an age (2h), not {text:?}."
            ))
        })
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn decode(text: &str) -> String {
    form_urlencoded::parse(format!("v={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// How long is left, in words, for a circuit.
pub(crate) fn words(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs().max(1))).to_string()
}

/// Entries of one page of a list that was read `offset + PAGE_ROWS + 1` long, and whether a next
/// page follows.
pub(crate) fn page_of<T>(all: &[T], offset: usize) -> (&[T], bool) {
    let rest = all.get(offset..).unwrap_or_default();
    (&rest[..rest.len().min(PAGE_ROWS)], rest.len() > PAGE_ROWS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn only_ip_literals_localhost_and_configured_names_are_served() {
        let configured = vec!["hooks.example.com".to_owned()];
        let cases = [
            ("127.0.0.1:8089", true),
            ("[::1]:8089", true),
            ("localhost:8089", true),
            ("LOCALHOST", true),
            ("hooks.example.com", true),
            ("hooks.example.com:8443", false),
            ("attacker.example:8089", false),
            ("127.0.0.1.nip.io:8089", false),
        ];
        for (host, allowed) in cases {
            let h: http::HeaderMap = [(header::HOST, HeaderValue::from_static(host))]
                .into_iter()
                .collect();
            assert_eq!(host_allowed(&h, &configured), allowed, "{host}");
        }
        assert!(!host_allowed(&http::HeaderMap::new(), &configured));
    }

    #[test]
    fn a_post_must_come_from_this_origin() {
        let cases = [
            (
                vec![("host", "127.0.0.1:1"), ("origin", "http://127.0.0.1:1")],
                true,
            ),
            (
                vec![("host", "127.0.0.1:1"), ("origin", "http://evil.example")],
                false,
            ),
            (vec![("host", "127.0.0.1:1"), ("origin", "null")], false),
            (
                vec![("host", "127.0.0.1:1"), ("sec-fetch-site", "same-origin")],
                true,
            ),
            (
                vec![("host", "127.0.0.1:1"), ("sec-fetch-site", "cross-site")],
                false,
            ),
            (
                vec![("host", "127.0.0.1:1"), ("sec-fetch-site", "same-site")],
                false,
            ),
            (vec![("host", "127.0.0.1:1")], true),
        ];
        for (pairs, expected) in cases {
            assert_eq!(same_origin(&headers(&pairs)), expected, "{pairs:?}");
        }
    }

    #[test]
    fn forms_keep_repeated_fields_and_decode_them() {
        let form = Form::parse(b"events=message_created&events=contact_created&url=https%3A%2F%2Fa.b%2F%3Fx%3D1&name=+");
        assert_eq!(form.events(), ["message_created", "contact_created"]);
        assert_eq!(form.get("url"), Some("https://a.b/?x=1"));
        assert_eq!(form.name(), None);
        assert_eq!(decode(&encode("7.wh_abc")), "7.wh_abc");
    }

    #[test]
    fn a_page_is_cut_from_a_list_read_one_longer() {
        let all: Vec<usize> = (0..PAGE_ROWS * 2 + 1).collect();
        let (first, more) = page_of(&all, 0);
        assert_eq!((first.len(), more), (PAGE_ROWS, true));
        let (last, more) = page_of(&all[..PAGE_ROWS + 3], PAGE_ROWS);
        assert_eq!((last.len(), more), (3, false));
        assert!(page_of(&all, 10 * PAGE_ROWS).0.is_empty());
    }
}
