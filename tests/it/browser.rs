//! A real headless Chromium for the dashboard's tests, driven over WebDriver (chromedriver on
//! a free loopback port, a fresh profile per browser).

use std::path::PathBuf;
use std::process::Stdio;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::common::{free_port, poll, tempdir};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One browser: its driver process, its session and its profile.
pub struct Browser {
    pub c: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a laptop-sized window.
    pub async fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is needed for the dashboard tests: apt-get install chromium chromium-driver"
            );
        }
        let port = free_port();
        let driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let profile = tempdir();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let url = format!("http://127.0.0.1:{port}");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        // chromedriver takes a moment to listen, and Chromium a moment to start.
        let c = poll(30, "chromedriver to start a Chromium session", || {
            let (caps, url, connector) = (caps.clone(), url.clone(), connector.clone());
            async move {
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&url)
                    .await
                    .ok()
            }
        })
        .await;
        Browser {
            c,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Runs `script` in the page (its `return` is the result).
    pub async fn js(&self, script: &str) -> Value {
        self.c.execute(script, vec![]).await.unwrap()
    }

    /// Waits until `script` returns something truthy, and returns it.
    pub async fn until(&self, secs: u64, what: &str, script: &str) -> Value {
        poll(secs, what, || async {
            match self.c.execute(script, vec![]).await {
                Ok(v) if !v.is_null() && v != json!(false) && v != json!("") && v != json!(0) => {
                    Some(v)
                }
                _ => None,
            }
        })
        .await
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        self.c
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    /// Types into the element `css` selects (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.c.find(Locator::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Saves a screenshot of the window as docs/screenshots/NAME.png.
    pub async fn shot(&self, name: &str) {
        // Two animation frames: whatever just changed has painted.
        let painted = "const done = arguments[arguments.length - 1]; \
             requestAnimationFrame(() => requestAnimationFrame(() => done(true)));";
        self.c.execute_async(painted, vec![]).await.unwrap();
        let png = self.c.screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(self) {
        let _ = self.c.close().await;
    }
}
