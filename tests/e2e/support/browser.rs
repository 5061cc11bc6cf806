//! A real browser: Debian's headless Chromium, driven through Debian's chromedriver over the W3C
//! WebDriver protocol.
//!
//! WebDriver is JSON over HTTP, and the few commands these tests use (navigate, find, click,
//! type, read, run a line of script, screenshot) are each one request; this client speaks them
//! with the hyper client the crate already has, instead of bringing in a WebDriver crate and its
//! dependency tree for a dozen calls. `scripts/test.sh` installs `chromium` and
//! `chromium-driver`; a machine without them fails here, loudly.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::daemon::free_port;
use super::eventually;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a test waits for a page to show what it expects.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// An element on the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium with a 1280×800 window.
    pub async fn start() -> Browser {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "{CHROMEDRIVER} or {CHROMIUM} is missing: run the tests with scripts/test.sh, which \
             installs Debian's chromium and chromium-driver"
        );
        let port = free_port().port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser {
            driver,
            base: format!("http://{}", SocketAddr::from(([127, 0, 0, 1], port))),
            session: String::new(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        };
        eventually(PATIENCE, "chromedriver to answer /status", || async {
            browser
                .try_call(Method::GET, "/status", None)
                .await
                .ok()
                .filter(|v| v["value"]["ready"] == json!(true))
        })
        .await;
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-background-networking",
                    "--disable-component-update", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,800", "--no-first-run", "--hide-scrollbars",
                ],
            },
        } } });
        let created = browser
            .call(Method::POST, "/session", Some(capabilities))
            .await;
        browser.session = created["value"]["sessionId"]
            .as_str()
            .expect("a WebDriver session id")
            .to_owned();
        browser
    }

    async fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(60), self.http.request(request))
            .await
            .map_err(|_| "WebDriver timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!("{status}: {}", value["value"]))
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method.clone(), path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    async fn session_call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await["value"].take()
    }

    pub async fn goto(&self, url: &str) {
        self.session_call(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        let value = self.session_call(Method::GET, "/url", None).await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// The first element `using` a strategy ("css selector", "xpath") finds now, if any.
    async fn try_locate(&self, using: &str, value: &str) -> Option<Element> {
        let path = format!("/session/{}/element", self.session);
        let body = json!({ "using": using, "value": value });
        let found = self.try_call(Method::POST, &path, Some(body)).await.ok()?;
        found["value"][ELEMENT]
            .as_str()
            .map(|id| Element(id.to_owned()))
    }

    /// The first element matching `css` now, if any.
    pub async fn try_find(&self, css: &str) -> Option<Element> {
        self.try_locate("css selector", css).await
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        eventually(PATIENCE, &format!("an element {css:?}"), || {
            self.try_find(css)
        })
        .await
    }

    /// The button or link whose text is exactly `text`, waiting for it.
    pub async fn find_text(&self, text: &str) -> Element {
        let xpath = format!(
            "//*[self::button or self::a][normalize-space(.)={}]",
            serde_json::to_string(text).expect("json")
        );
        eventually(PATIENCE, &format!("a button or link {text:?}"), || {
            self.try_locate("xpath", &xpath)
        })
        .await
    }

    pub async fn click(&self, element: &Element) {
        self.session_call(
            Method::POST,
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        )
        .await;
    }

    pub async fn click_text(&self, text: &str) {
        let element = self.find_text(text).await;
        self.click(&element).await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.session_call(
            Method::POST,
            &format!("/element/{}/clear", element.0),
            Some(json!({})),
        )
        .await;
        self.session_call(
            Method::POST,
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// The visible text of the whole page.
    pub async fn text(&self) -> String {
        let body = self.try_find("body").await;
        match body {
            Some(body) => {
                let path = format!("/session/{}/element/{}/text", self.session, body.0);
                self.try_call(Method::GET, &path, None)
                    .await
                    .ok()
                    .and_then(|v| v["value"].as_str().map(str::to_owned))
                    .unwrap_or_default()
            }
            None => String::new(),
        }
    }

    /// Waits until the page's text contains `wanted`, returning the text; on a timeout the
    /// panic shows the page it was on.
    pub async fn wait_for_text(&self, wanted: &str) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let text = self.text().await;
            if text.contains(wanted) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {PATIENCE:?} waiting for the page to say {wanted:?}; at {} it \
                 says:\n{text}",
                self.url().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `value` property of the element matching `css`.
    pub async fn value(&self, css: &str) -> String {
        let element = self.find(css).await;
        let value = self
            .session_call(
                Method::GET,
                &format!("/element/{}/property/value", element.0),
                None,
            )
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    pub async fn set_window(&self, width: u32, height: u32) {
        self.session_call(
            Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    /// Saves a PNG of the viewport as `name` in the directory `WEBHOOKD_SCREENSHOTS` names, when
    /// it is set (`scripts/test.sh --screenshots` sets it to `docs/screenshots`).
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("WEBHOOKD_SCREENSHOTS") else {
            return;
        };
        let png = self.session_call(Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("a base64 screenshot"))
            .expect("base64");
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        std::fs::write(Path::new(&dir).join(name), bytes).expect("write screenshot");
    }

    /// Ends the browser session (the window and its Chromium).
    pub async fn quit(mut self) {
        let path = format!("/session/{}", self.session);
        let _ = self.try_call(Method::DELETE, &path, None).await;
        self.session.clear();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed before `quit`: end the session by hand (Drop cannot await), so
        // chromedriver closes its Chromium, then stop chromedriver.
        if !self.session.is_empty() {
            use std::io::{Read, Write};
            let addr = self.base.trim_start_matches("http://");
            if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    stream,
                    "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
                     Connection: close\r\n\r\n",
                    self.session
                );
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
