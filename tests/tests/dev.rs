//! `nexus dev`: the README's first command starts a working local fleet and stops cleanly.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[tokio::test]
async fn dev_starts_four_nodes_that_see_each_other_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut child = nexus_tests::nexus()
        .args([
            "dev",
            "--data-dir",
            dir.to_str().unwrap(),
            "--base-port",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut apis = Vec::new();
    let mut key = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nexus dev exited early: {status}");
            }
            continue;
        };
        let line = line.trim().to_string();
        if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://"))
            && !line.starts_with("curl")
            && !line.starts_with("nexus")
        {
            apis.push(url.to_string());
        }
        if let Some(k) = line.strip_prefix("Admin API key: ") {
            key = Some(k.to_string());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let key = key.expect("admin key printed");
    assert_eq!(apis.len(), 4, "anchor + 3 nodes printed: {apis:?}");

    let http = reqwest::Client::new();
    nexus_tests::wait_until(
        Duration::from_secs(20),
        "4 nodes online on every node",
        || {
            let (http, apis, key) = (&http, &apis, &key);
            async move {
                for api in apis {
                    let Ok(response) = http
                        .get(format!("{api}/v1/nodes"))
                        .bearer_auth(key)
                        .send()
                        .await
                    else {
                        return false;
                    };
                    let Ok(body) = response.json::<serde_json::Value>().await else {
                        return false;
                    };
                    let items = body["items"].as_array().cloned().unwrap_or_default();
                    if items.len() != 4 || items.iter().any(|n| n["status"] != "online") {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await
    .unwrap();

    nexus_tests::signal(child.id(), libc::SIGINT);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nexus dev did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit: {status}");
    // Every node process is gone: their APIs no longer answer.
    for api in &apis {
        assert!(
            http.get(format!("{api}/healthz")).send().await.is_err(),
            "{api} still up"
        );
    }
}
