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
        "admin create --subject alice --account acme --name ci \
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

    let listed = run(&app, "admin list");
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

    let revoked = run(&app, &format!("admin revoke {id}"));
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(stdout(&revoked).contains("revoked"));
    // The server learns of the CLI's change through token_changes.
    app.wait_until_inactive(&secret).await;
    assert!(
        run(&app, &format!("admin revoke {id}")).status.success(),
        "revoke is idempotent"
    );

    let deleted = run(&app, &format!("admin delete {id}"));
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(!stdout(&run(&app, "admin list")).contains(&id));
}

async fn operator_commands_refuse_bad_input_with_exit_code_1(app: TestApp) {
    let create = "admin create --subject a --account b --name n";
    let cases = [
        (
            format!("{create} --scopes nope:read"),
            "unknown scope \"nope:read\"",
        ),
        (
            "admin create --subject= --account b --name n --scopes tag:read".to_owned(),
            "subject is required",
        ),
        (
            format!("{create} --scopes tag:read --expires-at 2001-01-01T00:00:00Z"),
            "not in the future",
        ),
        (
            "admin revoke AAAAAAAAAAAAAAAAAAAAAA".to_owned(),
            "no token with id",
        ),
        (
            "admin delete AAAAAAAAAAAAAAAAAAAAAA".to_owned(),
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
        stdout(&run(&app, "admin list")).lines().count() == 1,
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
    assert_eq!(unknown.status.code(), Some(3), "NOT_FOUND");
    assert!(
        stderr(&unknown).contains("NotFound"),
        "{}",
        stderr(&unknown)
    );

    let nobody = free_addr();
    let unreachable = patd_health(&nobody, "").await;
    assert_eq!(unreachable.status.code(), Some(75), "retry later");
    assert!(
        stderr(&unreachable).contains(&format!("cannot connect to {nobody}")),
        "{}",
        stderr(&unreachable)
    );
}

/// `patd scopes | true`, `patd list | head -1`: a reader that goes away early
/// ends the command quietly (141, as a shell reports for coreutils), in client
/// and operator commands alike, without a panic or a backtrace.
async fn a_closed_stdout_ends_commands_quietly(app: TestApp) {
    let manager = app.manager("alice", &[]).await;
    for _ in 0..3 {
        app.mint(("alice", "acme"), &["tag:read"], None).await;
    }
    let addr = app.addr.to_string();
    let url = app.database_url.expose().to_owned();
    let commands: Vec<Vec<String>> = [
        vec!["scopes", "--addr", &addr],
        vec!["list", "--addr", &addr],
        vec!["--database-url", &url, "admin", "list"],
    ]
    .iter()
    .map(|args| args.iter().map(|a| a.to_string()).collect())
    .collect();
    for args in commands {
        let manager = manager.clone();
        let output = tokio::task::spawn_blocking(move || {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            patd()
                .args(&args)
                .env("PATD_TOKEN", manager)
                .env("RUST_BACKTRACE", "1")
                .stdout(writer)
                .stderr(Stdio::piped())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(output.status.code(), Some(141), "{output:?}");
        assert!(output.stderr.is_empty(), "{}", stderr(&output));
    }
}

backend_tests!(
    a_closed_stdout_ends_commands_quietly,
    client_rotates_shows_itself_reads_events_and_reports_leaks,
    client_commands_manage_tokens_through_the_api,
    client_exit_codes_tell_scripts_what_went_wrong,
    health_command_exits_zero_only_when_serving,
    operator_commands_mint_list_revoke_and_delete,
    operator_commands_refuse_bad_input_with_exit_code_1,
    serve_runs_until_sigterm_and_exits_zero,
);

/// Runs a client command against the app as the holder of `token` (if any),
/// feeding `stdin`; off the test's runtime, which serves the app.
async fn client(app: &TestApp, token: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let mut command = patd();
    command
        .args(args)
        .args(["--addr", &app.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("PATD_TOKEN", token);
    }
    let stdin = stdin.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("patd runs");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

async fn client_commands_manage_tokens_through_the_api(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let me = Some(manager.as_str());

    let created = client(
        &app,
        me,
        &[
            "create",
            "--name",
            "ci",
            "--scopes",
            "tag:read",
            "--expires-in",
            "30d",
        ],
        "",
    )
    .await;
    assert!(created.status.success(), "{}", stderr(&created));
    let secret = stdout(&created).trim().to_owned();
    assert!(
        app.format.parse(&secret).is_some(),
        "stdout is exactly the secret"
    );
    assert!(
        stderr(&created).contains("state:        active"),
        "{}",
        stderr(&created)
    );
    assert!(!stderr(&created).contains(&secret));
    assert!(app.is_active(&secret).await);

    for name in ["b", "c", "d"] {
        let made = client(
            &app,
            me,
            &["create", "--name", name, "--scopes", "tag:read", "--json"],
            "",
        )
        .await;
        let made = &json_lines(&made)[0];
        assert_eq!(made["token"]["name"], name);
        assert!(made["secret"].as_str().unwrap().starts_with("patd_"));
    }
    // Pages of two: every token is listed once, newest first.
    let listed = client(&app, me, &["list", "--json", "--page-size", "2"], "").await;
    assert!(listed.status.success(), "{}", stderr(&listed));
    let names: Vec<String> = json_lines(&listed)
        .iter()
        .map(|token| token["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["d", "c", "b", "ci", "minted"]);
    let ci = json_lines(&listed)
        .into_iter()
        .find(|token| token["name"] == "ci")
        .unwrap();
    let id = ci["id"].as_str().unwrap().to_owned();
    assert_eq!(ci["state"], "active");
    assert!(ci["expires_at"].as_str().unwrap().ends_with('Z'));

    let table = client(&app, me, &["list"], "").await;
    assert!(stdout(&table).lines().next().unwrap().starts_with("ID"));
    assert_eq!(stdout(&table).lines().count(), 6, "header and five tokens");

    let got = client(&app, me, &["get", &id], "").await;
    assert!(
        stdout(&got).contains(&format!("id:           {id}")),
        "{}",
        stdout(&got)
    );

    let introspected = client(
        &app,
        None,
        &["introspect", "--require", "tag:read", "--json"],
        &format!("{secret}\n"),
    )
    .await;
    assert!(introspected.status.success(), "{}", stderr(&introspected));
    assert_eq!(json_lines(&introspected)[0]["subject"], "alice");
    let lacking = client(
        &app,
        None,
        &["introspect", "--require", "license:write"],
        &secret,
    )
    .await;
    assert_eq!(lacking.status.code(), Some(6));
    assert!(stdout(&lacking).contains("missing:      license:write"));

    let revoked = client(&app, me, &["revoke", &id, "--json"], "").await;
    assert_eq!(json_lines(&revoked)[0]["state"], "revoked");
    let inactive = client(&app, None, &["introspect"], &secret).await;
    assert_eq!(inactive.status.code(), Some(6));
    assert_eq!(stdout(&inactive).trim(), "active:       false");

    let deleted = client(&app, me, &["delete", &id], "").await;
    assert!(deleted.status.success());
    let gone = client(&app, me, &["get", &id], "").await;
    assert_eq!(gone.status.code(), Some(3), "{}", stderr(&gone));
    assert!(
        stderr(&gone).starts_with("patd: NotFound: "),
        "{}",
        stderr(&gone)
    );

    let scopes = client(&app, None, &["scopes", "--json"], "").await;
    assert_eq!(json_lines(&scopes).len(), 29);
}

async fn client_exit_codes_tell_scripts_what_went_wrong(app: TestApp) {
    let manager = app.manager("alice", &[]).await;
    let (reader, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let cases: [(Option<&str>, &[&str], i32, &str); 5] = [
        (Some("patd_nonsense"), &["list"], 4, "Unauthenticated"),
        (Some(&reader), &["list"], 4, "PermissionDenied"),
        (
            Some(&manager),
            &["create", "--name", "x", "--scopes", "nope:read"],
            5,
            "nope:read",
        ),
        (
            Some(&manager),
            &[
                "create",
                "--name",
                "x",
                "--scopes",
                "personalAccessToken:write",
                "--expires-at",
                "2001-01-01T00:00:00Z",
            ],
            5,
            "future",
        ),
        (None, &["list"], 4, "PATD_TOKEN"),
    ];
    for (token, args, code, message) in cases {
        let output = client(&app, token, args, "").await;
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
        for secret in [&manager, &reader] {
            assert!(
                !stderr(&output).contains(secret.as_str()),
                "a secret in an error"
            );
        }
    }
    let empty = client(&app, None, &["introspect"], "").await;
    assert_eq!(empty.status.code(), Some(5));
    assert!(stderr(&empty).contains("no token on stdin"));

    let mut nowhere = patd();
    let nobody = free_addr();
    nowhere.args(["scopes", "--addr", &nobody]);
    let output = tokio::task::spawn_blocking(move || nowhere.output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(75), "unreachable: retry later");
    assert!(stderr(&output).contains(&format!("cannot connect to {nobody}")));
}

async fn client_rotates_shows_itself_reads_events_and_reports_leaks(app: TestApp) {
    let manager = app.manager("alice", &["tag:read", "eventLog:read"]).await;
    let me = Some(manager.as_str());
    let (old, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;

    let rotated = client(
        &app,
        me,
        &["rotate", &record.id, "--grace", "10m", "--json"],
        "",
    )
    .await;
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let rotated = &json_lines(&rotated)[0];
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_eq!(rotated["token"]["id"], record.id.as_str());
    assert!(app.is_active(&old).await, "within the grace period");
    assert!(app.is_active(&new_secret).await);

    // A token rotates itself, whatever its scopes: the new secret on stdout.
    let own = client(&app, Some(&new_secret), &["rotate"], "").await;
    assert!(own.status.success(), "{}", stderr(&own));
    let newest = stdout(&own).trim().to_owned();
    let whoami = client(&app, Some(&newest), &["whoami", "--json"], "").await;
    assert_eq!(json_lines(&whoami)[0]["id"], record.id.as_str());
    assert!(json_lines(&whoami)[0]["rotated_at"].is_string());

    let leaked = client(
        &app,
        None,
        &["report-leak", "--source", "pastebin"],
        &format!("{newest}\nnot-a-token\n"),
    )
    .await;
    assert!(leaked.status.success(), "{}", stderr(&leaked));
    assert!(stdout(&leaked).contains("reported 2 tokens"));
    assert!(!app.is_active(&newest).await);

    let events = client(&app, me, &["events", "--json"], "").await;
    let kinds: Vec<String> = json_lines(&events)
        .iter()
        .map(|event| event["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        &kinds[..3],
        ["leak_reported", "rotated", "rotated"],
        "{kinds:?}"
    );
}

/// Configurations that would flap, lose tokens or misread credentials are
/// refused at start-up, by every command, with a message that names no secret.
#[test]
fn start_up_refuses_configurations_that_would_misbehave() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("patd.toml");
    std::fs::write(
        &config,
        "database_url = \"postgres://patd:hunter2@db.internal/patd\nlisten = 1\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let addr = free_addr();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--database-url", "sqlite:", "serve", "--listen", &addr],
            "names no file",
        ),
        (
            &[
                "--database-url",
                "sqlite:",
                "admin",
                "create",
                "--subject",
                "a",
                "--account",
                "b",
                "--name",
                "x",
                "--scopes",
                "tag:read",
            ],
            "names no file",
        ),
        (
            &[
                "--database-url",
                "sqlite::memory:",
                "serve",
                "--listen",
                &addr,
            ],
            "in-memory",
        ),
        (
            &["--token-prefix", "patdsvc_", "serve", "--listen", &addr],
            "collides",
        ),
        (&["--config", config, "serve", "--listen", &addr], "line 1"),
    ];
    for (args, expected) in cases {
        let output = patd().current_dir(dir.path()).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}: {output:?}");
        assert!(
            output.stdout.is_empty(),
            "{args:?} printed {}",
            stdout(&output)
        );
        let err = stderr(&output);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("hunter2"), "{args:?}: {err}");
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() == 1,
        "no database was created"
    );
}

/// SQLite has no advisory lock: processes that start together on a fresh file
/// (replicas, or a server and `patd admin create`) must still each end up
/// migrated, none of them failing because another applied a migration first.
#[test]
fn processes_starting_together_on_a_fresh_sqlite_file_all_migrate() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("patd.db").display());
        let children: Vec<Child> = (0..4)
            .map(|i| {
                let mut command = patd();
                command.args(["--database-url", &url]);
                if i % 2 == 0 {
                    command.arg("migrate");
                } else {
                    command.args([
                        "admin",
                        "create",
                        "--subject",
                        "alice",
                        "--account",
                        "acme",
                        "--name",
                        "ci",
                        "--scopes",
                        "tag:read",
                    ]);
                }
                command
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "round {round}: {}",
                stderr(&output)
            );
        }
    }
}
