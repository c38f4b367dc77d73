//! The real `gatehouse` binary: dev mode, SIGTERM, restart, and the
//! local-cluster script with a kill -9 of the leader.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// Polls `f` until it returns Some or `timeout` passes.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn admin(endpoint: &str, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(["admin", "--endpoint", endpoint]).args(args).env("GATEHOUSE_TOKEN", token).output().unwrap()
}

fn status_json(endpoint: &str, token: &str) -> Option<serde_json::Value> {
    let out = admin(endpoint, token, &["--json", "cluster", "status"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn start_dev(dir: &Path) -> Child {
    Command::new(BIN)
        .args(["serve", "--dev"])
        .current_dir(dir)
        .env("GATEHOUSE_HTTP_ADDR", "127.0.0.1:0")
        .env("GATEHOUSE_GRPC_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads stderr until the "node started" line and returns the gRPC address;
/// keeps draining stderr in the background so the node never blocks on it.
fn grpc_addr_from_log(child: &mut Child) -> String {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("a 'node started' line").unwrap();
        if let Some(rest) = line.split("grpc_addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    addr
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    wait_for("exit after SIGTERM", Duration::from_secs(20), || child.try_wait().unwrap())
}

#[test]
fn dev_mode_prints_a_key_once_serves_admin_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = start_dev(dir.path());
    let addr = grpc_addr_from_log(&mut child);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let key = wait_for("the bootstrap key on stdout", Duration::from_secs(30), || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line.trim().starts_with("gk_").then(|| line.trim().to_string())
    });
    let endpoint = format!("http://{addr}");
    let status = wait_for("status with a leader", Duration::from_secs(10), || {
        status_json(&endpoint, &key).filter(|s| s["leader"] == 1)
    });
    assert_eq!(status["nodes"][0]["voter"], true);
    the_cli_exits_non_zero_with_the_error_on_stderr_and_reads_keys_from_files(dir.path(), &endpoint, &key);
    // The secret never reaches the log or the data directory in plaintext.
    assert_eq!(sigterm(&mut child).code(), Some(0), "graceful exit");
    let data = dir.path().join("gatehouse-data");
    assert!(data.join("db").exists());
    let secret = gatehouse_domain::keys::parse_key(&key).expect("a well-formed key").1;
    for entry in walk(&data) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!contains(&bytes, secret.as_bytes()), "secret found in {}", entry.display());
    }

    // A restart keeps the state and prints no new key.
    let mut child = start_dev(dir.path());
    let addr = grpc_addr_from_log(&mut child);
    let endpoint = format!("http://{addr}");
    wait_for("status after restart", Duration::from_secs(20), || {
        status_json(&endpoint, &key).filter(|s| s["leader"] == 1)
    });
    assert_eq!(sigterm(&mut child).code(), Some(0));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut rest).unwrap();
    assert!(!rest.contains("gk_"), "no second bootstrap key: {rest}");

    // Everything the node wrote is private to its user: directories 0700, files 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for entry in walk(&data) {
        assert_eq!(mode(&entry), 0o600, "{}", entry.display());
        assert_eq!(mode(entry.parent().unwrap()), 0o700, "{}", entry.display());
    }
    // A data directory others can read is refused at start, with the fix in the message.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--dev"])
        .current_dir(dir.path())
        .env("GATEHOUSE_HTTP_ADDR", "127.0.0.1:0")
        .env("GATEHOUSE_GRPC_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("open to other users (mode 755)") && stderr.contains("chmod o-rwx"), "{stderr}");
}

/// The real binary's contract with scripts: exit status, stdout, stderr, and
/// where the key may come from.
fn the_cli_exits_non_zero_with_the_error_on_stderr_and_reads_keys_from_files(dir: &Path, endpoint: &str, key: &str) {
    let cli = |args: &[&str], stdin: &str| {
        let mut child = Command::new(BIN)
            .args(["admin", "--endpoint", endpoint])
            .args(args)
            .env_remove("GATEHOUSE_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    // The key on the first line of a file; what follows is ignored.
    let file = dir.join("admin.key");
    std::fs::write(&file, format!("{key}\nsecond line\n")).unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = cli(&["--token-file", file, "--json", "user", "get", "admin"], "");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["username"], "admin", "{out}");
    assert!(err.is_empty(), "{err}");
    // Or from standard input.
    let (code, out, _) = cli(&["--token-file", "-", "--json", "user", "get", "admin"], &format!("{key}\n"));
    assert_eq!((code, out.contains("\"admin\"")), (Some(0), true));
    // The key on stdin's first line, a password on its second.
    let args = ["--token-file", "-", "user", "create", "piped", "--email", "p@example.com", "--password-stdin"];
    let (code, _, err) = cli(&args, &format!("{key}\na long piped password\n"));
    assert_eq!(code, Some(0), "{err}");
    // Errors: exit status 1, nothing on stdout, the error on stderr, no key echoed.
    for (args, want) in [
        (&["--token-file", file, "user", "get", "ghost"][..], "error: not found"),
        (&["--token-file", file, "user", "get", ""], "error: invalid argument"),
        (&["user", "get", "admin"], "error: an admin API key is required"),
        (&["--token-file", "/nonexistent/key", "user", "get", "admin"], "error: reading /nonexistent/key"),
    ] {
        let (code, out, err) = cli(args, "");
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.starts_with(want), "{args:?}: {err}");
        assert!(!err.contains(key), "{args:?}: the key echoed");
    }
    let (code, _, err) = cli(&["--token-file", "-", "user", "get", "admin"], "\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("no API key on the first line"), "{err}");
    // A key on the command line still works, with a warning that it is exposed.
    let (code, _, err) = cli(&["--token", key, "user", "get", "admin"], "");
    assert_eq!(code, Some(0), "{err}");
    assert!(err.starts_with("warning: --token puts the API key"), "{err}");
    assert!(!err.contains(key));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn local_cluster_script_survives_a_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lc");
    // Cargo sets the manifest dir at run time too; the compiled-in one names
    // whichever checkout built this binary, which a shared target dir may
    // have reused for another checkout.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let script = Path::new(&manifest).join("../deploy/local-cluster.sh");
    let up = Command::new("bash")
        .arg(&script)
        .args(["up", "3"])
        .env("GATEHOUSE_BIN", BIN)
        .env("LOCAL_CLUSTER_DIR", &root)
        .output()
        .unwrap();
    assert!(up.status.success(), "up failed: {}", String::from_utf8_lossy(&up.stderr));
    let env = std::fs::read_to_string(root.join("cluster.env")).unwrap();
    let var = |name: &str| env.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).unwrap().to_string();
    let token = var("GATEHOUSE_TOKEN");
    assert!(token.starts_with("gk_"));
    let status = status_json(&var("GATEHOUSE_ENDPOINT"), &token).expect("status");
    let leader = status["leader"].as_u64().unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);

    // kill -9 the leader process: the others elect a new leader.
    let pid = var(&format!("GATEHOUSE_PID_{leader}"));
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    let other = (1..=3).find(|&i| i != leader).unwrap();
    let endpoint = format!("http://{}", var(&format!("GATEHOUSE_GRPC_{other}")));
    let after = wait_for("a new leader", Duration::from_secs(10), || {
        status_json(&endpoint, &token).filter(|s| s["leader"].as_u64().is_some_and(|l| l != leader))
    });
    let dead = after["nodes"].as_array().unwrap().iter().find(|n| n["id"] == leader).unwrap().clone();
    assert_eq!(dead["reachable"], false);

    let down = Command::new("bash").arg(&script).arg("clean").env("LOCAL_CLUSTER_DIR", &root).output().unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(!root.exists());
}

#[test]
fn json_logs_parse_line_by_line_and_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--dev"])
        .current_dir(dir.path())
        .env("GATEHOUSE_HTTP_ADDR", "127.0.0.1:0")
        .env("GATEHOUSE_GRPC_ADDR", "127.0.0.1:0")
        .env("GATEHOUSE_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug,openraft=info,h2=info,hyper=info,tower=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every stderr line must be JSON; collected on a thread so the pipe never fills.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let collector = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in stderr.lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
            if v["message"] == "node started" {
                let _ = started_tx.send(v["grpc_addr"].as_str().unwrap().to_string());
            }
            seen.push(line);
        }
        seen
    });
    let grpc = started_rx.recv_timeout(Duration::from_secs(60)).expect("a 'node started' line");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let key = wait_for("the bootstrap key", Duration::from_secs(60), || {
        let line = stdout.next()?.ok()?;
        line.trim().starts_with("gk_").then(|| line.trim().to_string())
    });
    std::thread::spawn(move || stdout.for_each(drop));
    // Some activity that logs (an admin call), then stop.
    let out = admin(&format!("http://{grpc}"), &key, &["user", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(sigterm(&mut child).success());
    let seen = collector.join().expect("every log line is JSON");
    assert!(seen.len() > 5, "{seen:?}");
    let secret = key.splitn(3, '_').nth(2).unwrap();
    assert_eq!(secret.len(), 43);
    let leaked: Vec<&String> = seen.iter().filter(|l| l.contains(secret)).collect();
    assert!(leaked.is_empty(), "the key's secret reached the log: {leaked:?}");
}
