//! The edgecore binary's command line, run as a process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_edgecore");

fn edgecore(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run edgecore")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn minconfig_output_loads_back_without_warnings_and_validates() {
    let out = edgecore(&["--minconfig"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let loaded = config::from_yaml(&text).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    loaded.config.validate().unwrap();
    assert!(!loaded.config.modules.edged.hostname_override.is_empty());
}

#[test]
fn defaultconfig_output_loads_back_to_the_defaults() {
    let out = edgecore(&["--defaultconfig"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let loaded = config::from_yaml(&text).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let node = loaded.config.modules.edged.hostname_override.clone();
    assert_eq!(loaded.config, config::default_config(&node));
}

#[test]
fn version_is_printed() {
    let out = edgecore(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("edgecore "), "{text}");
}

#[test]
fn missing_config_exits_64_and_says_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgecore.yaml");
    let out = edgecore(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("--defaultconfig"), "{err}");
}

#[test]
fn bad_config_exits_64_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgecore.yaml");
    std::fs::write(
        &path,
        "apiVersion: wrong/v1\nkind: Nope\nmodules:\n  metaManager:\n    remoteQueryTimeout: 0\n",
    )
    .unwrap();
    let out = edgecore(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let err = stderr(&out);
    for key in [
        "apiVersion",
        "kind",
        "modules.metaManager.remoteQueryTimeout",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
    // Nothing started: no database was created next to the config.
    assert!(!dir.path().join("edgecore.db").exists());
}

#[test]
fn unparsable_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgecore.yaml");
    std::fs::write(&path, "modules:\n  edgeHub:\n    heartbeat: often\n").unwrap();
    let out = edgecore(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        stderr(&out).contains("modules.edgeHub.heartbeat"),
        "{}",
        stderr(&out)
    );
}

/// Starts offline (edgeHub disabled), warns about the unknown key, and stops cleanly on SIGTERM.
#[test]
fn runs_warns_about_unknown_keys_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/edgecore.db");
    let mut c = config::minimal_config("edge-cli");
    c.database.data_source = db.clone();
    c.modules.health.address = "127.0.0.1:0".to_owned();
    let yaml = format!("{}bogusTopLevelKey: 1\n", config::to_yaml(&c).unwrap());
    let path = dir.path().join("edgecore.yaml");
    std::fs::write(&path, yaml).unwrap();

    let mut child = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (tx, lines) = mpsc::channel();
    let reader = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    await_line(&lines, &mut seen, &pid, "edgecore started");
    assert!(
        seen.iter()
            .any(|l| l.contains("bogusTopLevelKey") && l.contains("WARN")),
        "{}",
        seen.join("\n")
    );
    assert!(
        !seen.iter().any(|l| l.contains('\u{1b}')),
        "no ANSI colours when not a TTY"
    );
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    await_line(&lines, &mut seen, &pid, "edgecore stopped");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(db.exists());
}

/// Serves /healthz, /readyz and /metrics on the configured address (port 0: the log says which).
#[test]
fn health_and_metrics_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config::minimal_config("edge-health");
    c.database.data_source = dir.path().join("edgecore.db");
    c.modules.health.address = "127.0.0.1:0".to_owned();
    let path = dir.path().join("edgecore.yaml");
    std::fs::write(&path, config::to_yaml(&c).unwrap()).unwrap();

    let mut child = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (tx, lines) = mpsc::channel();
    let reader = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    await_line(&lines, &mut seen, &pid, "health endpoint listening");
    let addr = seen
        .last()
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the log line names the address")
        .to_owned();
    await_line(&lines, &mut seen, &pid, "edgecore started");

    let (status, body) = get(&addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = get(&addr, "/readyz");
    assert_eq!(status, 200, "offline autonomy is ready: {body}");
    assert!(body.contains("offline"), "{body}");
    let (status, body) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    for series in [
        "edgecore_edgehub_session_state{state=\"disconnected\"} 1",
        "edgecore_metamanager_outbox_depth 0",
        "edgecore_store_size_bytes ",
        "edgecore_cert_expiry_timestamp_seconds ",
    ] {
        assert!(body.contains(series), "{series} missing in\n{body}");
    }
    assert!(body.ends_with("# EOF\n"));

    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    await_line(&lines, &mut seen, &pid, "edgecore stopped");
    assert!(child.wait().unwrap().success());
}

/// One HTTP/1.1 GET with `Connection: close`; the status and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the health endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .expect("read the response until close");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

/// Collects stderr lines into `seen` until one contains `needle`; kills the child and fails
/// after 60 s without a line.
fn await_line(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, pid: &str, needle: &str) {
    loop {
        match lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return;
                }
            }
            Err(e) => {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
                panic!(
                    "waiting for {needle:?}: {e}; stderr so far:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
}
