//! What the benchmarks that run a platform share: a real `gantry-agent` process beside the plane, and applying a
//! spec once its node is up.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Listener flags for a plane's or an agent's three listeners on free loopback ports.
pub const LOOPBACK_LISTENERS: [&str; 6] = [
    "--http-addr",
    "127.0.0.1:0",
    "--otlp-grpc-addr",
    "127.0.0.1:0",
    "--otlp-http-addr",
    "127.0.0.1:0",
];

/// Runs `work` in `data_dir`, or in a fresh directory under the system's temporary directory (named after `name`
/// and this process) that is removed after.
///
/// # Errors
/// `work`'s.
pub fn in_data_dir(
    data_dir: Option<&Path>,
    name: &str,
    work: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match data_dir {
        Some(dir) => work(dir),
        None => {
            let root =
                std::env::temp_dir().join(format!("gantry-bench-{name}-{}", std::process::id()));
            let result = work(&root);
            let _ = std::fs::remove_dir_all(&root);
            result
        }
    }
}

/// A plane and one node agent, with a `deployer` token.
pub struct Platform {
    /// The agent (dropped first: its instances stop with it).
    pub agent: AgentProcess,
    /// The plane, stopped when dropped.
    _plane: crate::ingest::PlaneProcess,
    /// The plane's API, `http://host:port`.
    pub base: String,
    /// A `deployer` token.
    pub deployer: String,
}

impl Platform {
    /// Starts a plane in `root/plane` and an agent in `root/agent` with a `node` token.
    ///
    /// # Errors
    /// Either could not be started.
    pub fn start(root: &Path) -> anyhow::Result<Platform> {
        use gantry_proto::Role;
        let plane_dir = root.join("plane");
        std::fs::create_dir_all(&plane_dir)?;
        let deployer = crate::ingest::create_token(&plane_dir, Role::Deployer, "bench-deployer")?;
        let node = crate::ingest::create_token(&plane_dir, Role::Node, "bench-node")?;
        let plane = crate::ingest::PlaneProcess::start_with(&plane_dir, &[])?;
        let base = format!("http://{}", plane.endpoints.http);
        let agent = AgentProcess::start(&root.join("agent"), &base, &node)?;
        Ok(Platform {
            agent,
            _plane: plane,
            base,
            deployer,
        })
    }
}

/// A `gantry-agent` process, stopped (SIGTERM, its instances with it) when dropped.
pub struct AgentProcess(Child);

impl AgentProcess {
    /// Starts the `gantry-agent` beside the running `gantry` binary against the plane at `base` with a `node`
    /// token, keeping its data in `data_dir`.
    ///
    /// # Errors
    /// The binary is missing or does not start.
    pub fn start(data_dir: &Path, base: &str, node_token: &str) -> anyhow::Result<AgentProcess> {
        let agent_exe = std::env::current_exe()?.with_file_name("gantry-agent");
        if !agent_exe.is_file() {
            bail!(
                "{} not found: build it beside gantry (`cargo build --release -p gantry-agent`)",
                agent_exe.display()
            );
        }
        Ok(AgentProcess(
            Command::new(&agent_exe)
                .args(["--plane", base, "--token", node_token, "--data-dir"])
                .arg(data_dir)
                .args(LOOPBACK_LISTENERS)
                .args([
                    "--no-docker",
                    "--no-host-metrics",
                    "--heartbeat-interval-ms",
                    "500",
                    "--stop-instances-on-exit",
                    "true",
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("start gantry-agent")?,
        ))
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::ingest::cpu_seconds(&format!("/proc/{}/stat", self.0.id()))
    }

    /// A memory figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), MiB.
    pub fn memory_mib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

/// A free TCP port on loopback.
///
/// # Errors
/// No port could be bound.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits (up to 60 s) until a node is up, then applies `spec` (a node must be up first, or the slots stay
/// unplaced until the next placement round).
///
/// # Errors
/// No node came up, or the plane refused the spec.
pub async fn apply_when_up(
    client: &reqwest::Client,
    base: &str,
    deployer: &str,
    spec: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        anyhow::ensure!(Instant::now() < deadline, "no node came up in 60 s");
        let nodes: serde_json::Value = client
            .get(format!("{base}/api/v1/nodes"))
            .bearer_auth(deployer)
            .send()
            .await?
            .json()
            .await?;
        if nodes["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["status"] == "up"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let applied = client
        .post(format!("{base}/api/v1/apply"))
        .bearer_auth(deployer)
        .json(&serde_json::json!({"file": "bench.yaml", "content": spec}))
        .send()
        .await?;
    anyhow::ensure!(
        applied.status().is_success(),
        "apply: {}",
        applied.text().await?
    );
    Ok(())
}
