//! `nexus dev`: a local fleet on loopback in one command — one anchor and N nodes, each a real
//! `nexus` process with its own data directory, joined with real tokens. Re-running it restarts
//! the same fleet from its data. Ctrl-C stops every process cleanly.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::config::AddrFlags;
use crate::datadir::DataDir;

struct Member {
    name: String,
    dir: DataDir,
    child: Child,
}

fn addrs(base_port: u16, index: u16) -> AddrFlags {
    let port = |offset: u16| {
        if base_port == 0 {
            0
        } else {
            base_port + index * 10 + offset
        }
    };
    AddrFlags {
        api: Some(format!("127.0.0.1:{}", port(0))),
        gossip: Some(format!("127.0.0.1:{}", port(1))),
        quic: Some(format!("127.0.0.1:{}", port(2))),
        config: None,
        nic: None,
    }
}

fn spawn(exe: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log file {}", log.display()))?;
    Command::new(exe)
        .args(args)
        // The local development fleet lives on loopback; plain HTTP keeps `curl` simple there.
        .env("NEXUS_HTTP_INSECURE_PLAINTEXT", "true")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .env(
            "NEXUS_LOG",
            std::env::var("NEXUS_LOG").unwrap_or_else(|_| "info".into()),
        )
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
}

/// Waits until the node in `dir` wrote its endpoints and answers `/healthz`.
async fn wait_ready(member: &mut Member, deadline: Duration) -> anyhow::Result<String> {
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    while started.elapsed() < deadline {
        if let Some(status) = member.child.try_wait()? {
            bail!(
                "{} exited ({status}) before serving; see {}",
                member.name,
                member.dir.root().join("nexus.log").display()
            );
        }
        if let Ok(text) = std::fs::read_to_string(member.dir.endpoints())
            && let Ok(endpoints) = serde_json::from_str::<serde_json::Value>(&text)
            && endpoints["pid"].as_u64() == member.child.id().map(u64::from)
            && let Some(api) = endpoints["api"].as_str()
            && http
                .get(format!("{api}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        {
            return Ok(api.to_string());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{} did not start serving within {deadline:?}", member.name)
}

async fn stop_all(members: &mut [Member]) {
    for member in members.iter() {
        if let Some(pid) = member.child.id() {
            // SIGTERM lets each node persist its membership and close its sockets.
            terminate(pid);
        }
    }
    for member in members.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(5), member.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = member.child.kill().await;
            }
        }
    }
}

/// Runs the local fleet until Ctrl-C.
pub async fn run(root: PathBuf, nodes: u16, base_port: u16) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the nexus executable")?;
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let anchor_dir = DataDir::new(root.join("anchor"));
    let anchor_addrs = addrs(base_port, 0);
    if !anchor_dir.db().exists() {
        crate::enroll::init(&anchor_dir, "dev", &anchor_addrs, &Default::default())?;
    }
    let admin_key = std::fs::read_to_string(anchor_dir.admin_key())
        .with_context(|| format!("cannot read {}", anchor_dir.admin_key().display()))?
        .trim()
        .to_string();

    let mut members = Vec::new();
    let result = async {
        let anchor_args = vec![
            "run".to_string(),
            "--data-dir".to_string(),
            anchor_dir.root().display().to_string(),
        ];
        let log = anchor_dir.root().join("nexus.log");
        members.push(Member {
            name: "anchor".into(),
            child: spawn(&exe, &anchor_args, &log)?,
            dir: anchor_dir.clone(),
        });
        let anchor_api = wait_ready(&mut members[0], Duration::from_secs(20)).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut apis = vec![("anchor".to_string(), anchor_api.clone())];
        for i in 1..=nodes {
            let name = format!("node-{i}");
            let dir = DataDir::new(root.join(&name));
            let node_addrs = addrs(base_port, i);
            let mut args;
            if dir.db().exists() {
                args = vec![
                    "run".to_string(),
                    "--data-dir".into(),
                    dir.root().display().to_string(),
                ];
            } else {
                let response: serde_json::Value = http
                    .post(format!("{anchor_api}/v1/tokens"))
                    .bearer_auth(&admin_key)
                    .json(&serde_json::json!({ "uses": 1, "ttl_seconds": 600 }))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let token = response["token"]
                    .as_str()
                    .context("the anchor returned no token")?;
                std::fs::create_dir_all(dir.root())?;
                args = vec![
                    "join".to_string(),
                    token.to_string(),
                    "--data-dir".into(),
                    dir.root().display().to_string(),
                    "--site".into(),
                    "dev".into(),
                ];
                for (flag, value) in [
                    ("--api", &node_addrs.api),
                    ("--gossip", &node_addrs.gossip),
                    ("--quic", &node_addrs.quic),
                ] {
                    if let Some(value) = value {
                        args.push(flag.into());
                        args.push(value.clone());
                    }
                }
            }
            std::fs::create_dir_all(dir.root())?;
            let log = dir.root().join("nexus.log");
            members.push(Member {
                name: name.clone(),
                child: spawn(&exe, &args, &log)?,
                dir,
            });
            let last = members.len() - 1;
            let api = wait_ready(&mut members[last], Duration::from_secs(20)).await?;
            apis.push((name, api));
        }
        println!(
            "Nexus dev fleet is running ({} nodes). Data and logs: {}/",
            apis.len(),
            root.display()
        );
        println!();
        for (name, api) in &apis {
            println!("  {name:<8} {api}");
        }
        println!();
        println!("Admin API key: {admin_key}");
        println!();
        println!("Try:");
        println!("  curl -H 'Authorization: Bearer {admin_key}' {anchor_api}/v1/nodes");
        println!("  nexus nodes --api {anchor_api} --key {admin_key}");
        println!();
        println!("Press Ctrl-C to stop.");
        anyhow::Ok(())
    }
    .await;
    if let Err(err) = result {
        stop_all(&mut members).await;
        return Err(err);
    }

    let exited = async {
        loop {
            for member in members.iter_mut() {
                if let Ok(Some(status)) = member.child.try_wait() {
                    return (member.name.clone(), status);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        exited = exited => Some(exited),
    };
    if let Some((name, status)) = &outcome {
        eprintln!(
            "{name} exited ({status}); stopping the dev fleet. See {}/{name}/nexus.log",
            root.display()
        );
    } else {
        println!("\nStopping the dev fleet…");
    }
    stop_all(&mut members).await;
    match outcome {
        Some((name, _)) => bail!("{name} stopped unexpectedly"),
        None => Ok(()),
    }
}

/// Sends SIGTERM to a child process.
#[allow(unsafe_code)]
fn terminate(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child we spawned and have
    // not yet reaped, so it cannot name an unrelated process.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}
