//! The `patd` binary itself: operator bootstrap commands and `serve` as a process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, free_addr, patd_health};

/// `patd` with no PATD_* variables from the developer's environment.
fn patd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_patd"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PATD_") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs `patd` on the app's database with space-separated `args`.
fn run(app: &TestApp, args: &str) -> Output {
    patd()
        .arg("--database-url")
        .arg(app.database_url.expose())
        .args(args.split(' '))
        .output()
        .expect("patd runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

async fn operator_commands_mint_list_revoke_and_delete(app: TestApp) {
    let created = run(
        &app,
        "token create --subject alice --account acme --name ci \
         --scopes license:read,personalAccessToken:write --expires-in 30d",
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let secret = stdout(&created).trim().to_owned();
    assert!(
        app.format.parse(&secret).is_some(),
        "stdout is exactly the secret"
    );
    let note = stderr(&created);
    assert!(
        note.contains("alice") && note.contains("shown once"),
        "{note}"
    );
    assert!(
        !note.contains(&secret),
        "the secret is printed once, on stdout only"
    );
    let id = note.split_whitespace().nth(1).unwrap().to_owned();
    assert!(app.is_active(&secret).await);

    let listed = run(&app, "token list");
    assert!(listed.status.success());
    let line = stdout(&listed)
        .lines()
        .find(|l| l.starts_with(&id))
        .map(str::to_owned)
        .expect("listed");
    assert!(
        line.contains("active") && line.contains("license:read personalAccessToken:write"),
        "{line}"
    );
    assert!(!stdout(&listed).contains(&secret));

    let revoked = run(&app, &format!("token revoke {id}"));
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(stdout(&revoked).contains("revoked"));
    // The server learns of the CLI's change through token_changes.
    app.wait_until_inactive(&secret).await;
    assert!(
        run(&app, &format!("token revoke {id}")).status.success(),
        "revoke is idempotent"
    );

    let deleted = run(&app, &format!("token delete {id}"));
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(!stdout(&run(&app, "token list")).contains(&id));
}

async fn operator_commands_refuse_bad_input_with_exit_code_1(app: TestApp) {
    let create = "token create --subject a --account b --name n";
    let cases = [
        (
            format!("{create} --scopes nope:read"),
            "unknown scope \"nope:read\"",
        ),
        (
            "token create --subject= --account b --name n --scopes tag:read".to_owned(),
            "subject is required",
        ),
        (
            format!("{create} --scopes tag:read --expires-at 2001-01-01T00:00:00Z"),
            "not in the future",
        ),
        (
            "token revoke AAAAAAAAAAAAAAAAAAAAAA".to_owned(),
            "no token with id",
        ),
        (
            "token delete AAAAAAAAAAAAAAAAAAAAAA".to_owned(),
            "no token with id",
        ),
    ];
    for (args, needle) in cases {
        let output = run(&app, &args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    assert!(
        stdout(&run(&app, "token list")).lines().count() == 1,
        "only the header: nothing was created"
    );
}

/// Waits for the JSON log line announcing the listening address, and returns it.
fn serving_address(child: &mut Child) -> String {
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end, so the server never writes into a closed pipe.
        for line in BufReader::new(stderr).lines() {
            let _ = lines_tx.send(line.unwrap());
        }
    });
    loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("patd serve announces its address");
        if line.contains("\"message\":\"listening\"") {
            assert!(line.starts_with('{'), "JSON log line: {line}");
            let start = line.find("\"addr\":\"").unwrap() + 8;
            let end = start + line[start..].find('"').unwrap();
            return line[start..end].to_owned();
        }
    }
}

async fn serve_runs_until_sigterm_and_exits_zero(app: TestApp) {
    let workdir = tempfile::tempdir().unwrap();
    let mut command = patd();
    command
        .current_dir(workdir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if app.backend == Backend::Postgres {
        // The environment selects the backend as well as a flag does.
        command.env("PATD_DATABASE_URL", app.database_url.expose());
    }
    let mut child = command.spawn().unwrap();
    let addr = serving_address(&mut child);

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
    let default_file = workdir.path().join("patd.db");
    assert_eq!(
        default_file.exists(),
        app.backend == Backend::Sqlite,
        "SQLite file in the working directory by default"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // The client stays connected and responsive while the server drains: the
    // server closes the idle connection itself and exits well within its grace.
    let started = std::time::Instant::now();
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM is a clean exit");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited after {:?}",
        started.elapsed()
    );
    drop(health);
}

async fn health_command_exits_zero_only_when_serving(app: TestApp) {
    let addr = app.addr.to_string();
    for service in ["", "liveness", "pat.v1.IntrospectionService"] {
        let serving = patd_health(&addr, service).await;
        assert!(
            serving.status.success(),
            "{service:?}: {}",
            stderr(&serving)
        );
        assert_eq!(stdout(&serving).trim(), "SERVING");
    }
    let unknown = patd_health(&addr, "no.such.Service").await;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("NotFound"),
        "{}",
        stderr(&unknown)
    );

    let nobody = free_addr();
    let unreachable = patd_health(&nobody, "").await;
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        stderr(&unreachable).contains(&format!("cannot connect to {nobody}")),
        "{}",
        stderr(&unreachable)
    );
}

backend_tests!(
    health_command_exits_zero_only_when_serving,
    operator_commands_mint_list_revoke_and_delete,
    operator_commands_refuse_bad_input_with_exit_code_1,
    serve_runs_until_sigterm_and_exits_zero,
);
