//! Headless Chromium driven over WebDriver (`chromedriver` from Debian's `chromium-driver`, fantoccini as the
//! client), and the dashboard's login through it. Screenshots go to `target/e2e-screenshots/` (the tests'
//! artifacts); with `GANTRY_SCREENSHOTS=DIR` (relative to the repository) they are written there too
//! (`GANTRY_SCREENSHOTS=docs/screenshots` for the README's tour).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::{Child, Command};

use super::api::wait_until;
use super::process::{free_port, repo_root};

/// A chromedriver process and one browser session on it; both end with it.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    ///
    /// # Errors
    /// chromedriver or Chromium is missing (`apt-get install chromium chromium-driver`), or does not start.
    pub async fn start() -> Result<Browser> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .ok_or_else(|| anyhow!("no chromium: apt-get install chromium chromium-driver"))?;
        let port = free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("no chromedriver: apt-get install chromium chromium-driver")?;
        let url = format!("http://127.0.0.1:{port}");
        wait_until(
            Duration::from_secs(20),
            "chromedriver listening",
            || async {
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ()))
            },
        )
        .await?;
        let profile = tempfile::tempdir()?;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .context("starting a Chromium session")?;
        Ok(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Logs in at `base` as `name`; the browser ends on the page the login leads to.
    ///
    /// # Errors
    /// The form is missing or the login fails.
    pub async fn login(&self, base: &str, name: &str, password: &str) -> Result<()> {
        self.client.goto(&format!("{base}/login")).await?;
        self.client
            .wait()
            .for_element(Locator::Id("name"))
            .await?
            .send_keys(name)
            .await?;
        self.client
            .find(Locator::Id("password"))
            .await?
            .send_keys(password)
            .await?;
        self.client
            .find(Locator::Id("login"))
            .await?
            .click()
            .await?;
        wait_until(Duration::from_secs(10), "the login to finish", || async {
            let path = self.client.current_url().await?.path().to_owned();
            Ok((path != "/login").then_some(()))
        })
        .await
    }

    /// The current page's path.
    pub async fn path(&self) -> Result<String> {
        Ok(self.client.current_url().await?.path().to_owned())
    }

    /// Accepts the confirmation dialog an action form opens, once it is open; returns its question.
    pub async fn confirm(&self) -> Result<String> {
        let text = wait_until(Duration::from_secs(10), "a confirmation dialog", || async {
            Ok(self.client.get_alert_text().await.ok())
        })
        .await?;
        self.client.accept_alert().await?;
        Ok(text)
    }

    /// Whether an alert, confirm or prompt dialog is open.
    pub async fn dialog_open(&self) -> bool {
        self.client.get_alert_text().await.is_ok()
    }

    /// Saves a full-page screenshot as `NAME.png` among the test artifacts (and in `GANTRY_SCREENSHOTS`).
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let height = self
            .client
            .execute("return document.documentElement.scrollHeight", vec![])
            .await?
            .as_u64()
            .unwrap_or(1000)
            .clamp(700, 3000);
        self.client.set_window_size(1400, height as u32).await?;
        let png = self.client.screenshot().await?;
        let dir = repo_root().join("target/e2e-screenshots");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png)?;
        if let Ok(extra) = std::env::var("GANTRY_SCREENSHOTS") {
            // Relative to the repository (tests run in `tests/`).
            let extra = repo_root().join(extra);
            std::fs::create_dir_all(&extra)?;
            std::fs::write(extra.join(format!("{name}.png")), &png)?;
        }
        self.client.set_window_size(1400, 1000).await?;
        Ok(path)
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        Ok(())
    }
}
