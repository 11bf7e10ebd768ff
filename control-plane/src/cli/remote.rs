//! What every CLI command that talks to a running plane shares: where the plane is and which token to send
//! (`--plane URL --token TOKEN`, or `GANTRY_PLANE` / `GANTRY_TOKEN`), `--json` for machine-readable output, and the
//! exit codes: 0 done, 1 the plane refused or failed the request (the answer's message is printed), 2 a usage error,
//! 3 the plane could not be reached or asked to retry later (503, 429): worth retrying.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use gantry_proto::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The plane to talk to.
#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// The plane's URL.
    #[arg(
        long,
        env = "GANTRY_PLANE",
        default_value = "http://127.0.0.1:8700",
        global = true
    )]
    pub plane: String,
    /// An API token (its role must allow the command).
    #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the plane's answer as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A failure with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The plane answered with a refusal or a failure of its own (exit 1).
    #[error("{0}")]
    Refused(String),
    /// The plane could not be reached, or asked to retry later (exit 3).
    #[error("{0}")]
    Unreachable(String),
}

/// The exit code of a command's result, printing its error.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            match error.downcast_ref::<CliError>() {
                Some(CliError::Unreachable(_)) => ExitCode::from(3),
                _ => ExitCode::from(1),
            }
        }
    }
}

impl Remote {
    /// The URL of `segments` under the plane's base URL, each segment percent-encoded, with `query`.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.plane).with_context(|| {
            format!(
                "--plane `{}` is not a URL such as http://127.0.0.1:8700",
                self.plane
            )
        })?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--plane `{}` cannot be a base URL", self.plane))?
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    fn request(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let token = self.token.as_deref().filter(|t| !t.is_empty()).context(
            "no token: pass --token or set GANTRY_TOKEN (create one with `gantry token create`)",
        )?;
        Ok(reqwest::Client::new()
            .request(method, self.url(segments, query)?)
            .bearer_auth(token)
            .timeout(std::time::Duration::from_secs(60)))
    }

    /// Sends a request to the path of `segments` (e.g. `["api", "v1", "secrets", name]`) with `query` and an
    /// optional JSON body, and reads the JSON answer (`()` for an empty one).
    ///
    /// # Errors
    /// [`CliError::Unreachable`] when the plane cannot be reached or answers 429/503; [`CliError::Refused`] with the
    /// plane's message for any other non-2xx.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> anyhow::Result<T> {
        let mut request = self.request(method, segments, query)?;
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|error| {
            CliError::Unreachable(format!("cannot reach the plane at {}: {error}", self.plane))
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|error| {
            CliError::Unreachable(format!("the plane's answer was cut off: {error}"))
        })?;
        if !status.is_success() {
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|body| body.error)
                .unwrap_or(text);
            let message = format!("the plane answered {status}: {message}");
            return Err(
                if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    CliError::Unreachable(message).into()
                } else {
                    CliError::Refused(message).into()
                },
            );
        }
        let text = if text.trim().is_empty() {
            "null"
        } else {
            &text
        };
        serde_json::from_str(text).context("the plane's answer is not what this gantry expects")
    }

    /// Prints a value as pretty JSON.
    pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}
