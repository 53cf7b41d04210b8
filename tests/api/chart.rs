//! The helm chart and the Dockerfile, checked without a helm binary: values against
//! the schema (good and bad), every `.Values` reference against values.yaml, the
//! configuration file the chart renders against patd's own loader, and the
//! objects, probes and hooks a deployment relies on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use patd::config::{Config, Overrides};
use serde_json::{Value, json};

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/patd")
}

fn read(relative: &str) -> String {
    let path = chart_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn default_values() -> Value {
    serde_yaml_ng::from_str(&read("values.yaml")).expect("values.yaml is YAML")
}

/// Every template, by file name relative to `templates/`.
fn templates() -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut dirs = vec![chart_dir().join("templates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let name = path
                    .strip_prefix(chart_dir().join("templates"))
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                found.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

fn template(name: &str) -> String {
    read(&format!("templates/{name}"))
}

/// Validation errors of `values` against values.schema.json (empty when valid).
fn schema_errors(values: &Value) -> Option<String> {
    let schema: Value = serde_json::from_str(&read("values.schema.json")).expect("schema is JSON");
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("values.schema.json", schema)
        .expect("schema loads");
    let index = compiler
        .compile("values.schema.json", &mut schemas)
        .expect("schema is a valid JSON schema");
    schemas
        .validate(values, index)
        .err()
        .map(|err| format!("{err:#}"))
}

/// The value at a dotted `.Values` path such as `config.cacheTtl`.
fn lookup<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(values, |value, key| value.as_object()?.get(key))
}

/// `values` with the value at a dotted path replaced (or removed, for `None`).
fn with(values: &Value, path: &str, new: Option<Value>) -> Value {
    let mut values = values.clone();
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let mut target = &mut values;
    for part in parent.split('.').filter(|p| !p.is_empty()) {
        target = target.get_mut(part).expect("path exists in values.yaml");
    }
    let object = target.as_object_mut().unwrap();
    match new {
        Some(new) => object.insert(key.to_owned(), new),
        None => object.remove(key),
    };
    values
}

#[test]
fn default_values_and_documented_variants_pass_the_schema() {
    let values = default_values();
    assert_eq!(schema_errors(&values), None);
    let with_url = with(
        &values,
        "database.url",
        Some(json!("postgres://patd@db.example:5432/patd")),
    );
    assert_eq!(schema_errors(&with_url), None);
    let with_secret = with(&values, "database.existingSecret", Some(json!("patd-db")));
    assert_eq!(schema_errors(&with_secret), None);
    let tuned = with(&with_secret, "config.storageTimeout", Some(json!("1m 30s")));
    assert_eq!(schema_errors(&tuned), None);
}

#[test]
fn bad_values_are_rejected_by_the_schema() {
    let values = default_values();
    let cases: Vec<(&str, Option<Value>, &str)> = vec![
        ("replicaCount", Some(json!(-1)), "negative replicas"),
        ("replicas", Some(json!(3)), "unknown key (typo)"),
        ("config.databaseUrl", Some(json!("x")), "unknown config key"),
        ("image.pullPolicy", Some(json!("Sometimes")), "pull policy"),
        (
            "service.port",
            Some(json!("grpc")),
            "named port: gRPC probes need a number",
        ),
        ("service.port", Some(json!(70000)), "port out of range"),
        (
            "database.url",
            Some(json!("mysql://db/patd")),
            "not Postgres",
        ),
        (
            "database.url",
            Some(json!("postgres://db/patd")),
            "url and existingSecret both",
        ),
        (
            "securityContext.readOnlyRootFilesystem",
            Some(json!(false)),
            "writable root",
        ),
        (
            "podSecurityContext.runAsNonRoot",
            Some(json!(false)),
            "root",
        ),
        (
            "probes.liveness.periodSeconds",
            None,
            "probe without a period",
        ),
        (
            "probes.readiness.port",
            Some(json!(8080)),
            "probe port is the chart's",
        ),
        (
            "config.storageTimeout",
            Some(json!("5 seconds")),
            "not a duration",
        ),
        (
            "config.tokenPrefix",
            Some(json!("bad prefix")),
            "bad token prefix",
        ),
        ("config.logFormat", Some(json!("xml")), "log format"),
        ("config.shutdownGraceSeconds", Some(json!(0)), "no drain"),
        (
            "resources.limits.memory",
            Some(json!("lots")),
            "not a quantity",
        ),
        (
            "autoscaling.targetCPUUtilizationPercentage",
            Some(json!(150)),
            "over 100%",
        ),
        (
            "metrics.serviceMonitor.interval",
            Some(json!("often")),
            "not an interval",
        ),
        ("probes", None, "no probes"),
        ("tls.enabled", Some(json!(true)), "TLS without a Secret"),
        (
            "tls.clientAuth",
            Some(json!("sometimes")),
            "client auth mode",
        ),
        ("tls.healthPort", Some(json!(0)), "health port out of range"),
        (
            "preStopSleepSeconds",
            Some(json!(0)),
            "zero preStop sleep (refused before 1.33)",
        ),
        (
            "introspectionCallers",
            Some(json!("everyone")),
            "introspection policy",
        ),
        (
            "trustedCallers",
            Some(json!([{ "name": "portal" }])),
            "caller without a credential or certificate",
        ),
        (
            "trustedCallers",
            Some(json!([{ "name": "portal", "credentialHash": "abc" }])),
            "hash not 64 hex digits",
        ),
        (
            "trustedCallers",
            Some(json!([{ "credentialHash": "0".repeat(64) }])),
            "caller without a name",
        ),
    ];
    for (path, bad, why) in cases {
        let mut candidate = with(&values, path, bad);
        if why == "url and existingSecret both" {
            candidate = with(
                &candidate,
                "database.existingSecret",
                Some(json!("patd-db")),
            );
        }
        assert!(
            schema_errors(&candidate).is_some(),
            "{path} ({why}) was accepted"
        );
    }
}

/// Every `.Values.a.b` path a template mentions.
fn value_references(text: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for (start, _) in text.match_indices(".Values.") {
        let rest = &text[start + ".Values.".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
            .unwrap_or(rest.len());
        paths.insert(rest[..end].trim_end_matches('.').to_owned());
    }
    paths
}

#[test]
fn templates_use_only_values_that_exist_and_every_value_is_used() {
    let values = default_values();
    let mut used = BTreeSet::new();
    for (name, text) in templates() {
        for path in value_references(&text) {
            assert!(
                lookup(&values, &path).is_some(),
                "{name} uses .Values.{path}, which values.yaml lacks"
            );
            used.insert(path);
        }
    }
    // A value is used if it, or an object containing it, is referenced.
    fn leaves(value: &Value, prefix: &str, out: &mut Vec<String>) {
        match value.as_object() {
            Some(object) if !object.is_empty() => {
                for (key, child) in object {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    leaves(child, &path, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut all = Vec::new();
    leaves(&values, "", &mut all);
    for leaf in all {
        let covered = used
            .iter()
            .any(|path| leaf == *path || leaf.starts_with(&format!("{path}.")));
        assert!(covered, "values.yaml has {leaf}, which no template uses");
    }
}

#[test]
fn template_actions_are_balanced() {
    for (name, text) in templates() {
        assert_eq!(
            text.matches("{{").count(),
            text.matches("}}").count(),
            "{name}: unbalanced braces"
        );
        let mut depth = 0i32;
        for action in text.split("{{").skip(1) {
            let action = action.trim_start_matches('-').trim_start();
            let opens = ["if ", "with ", "range ", "define "]
                .iter()
                .any(|keyword| action.starts_with(keyword));
            if opens {
                depth += 1;
            } else if action.starts_with("end") {
                depth -= 1;
                assert!(depth >= 0, "{name}: `end` without a block");
            }
        }
        assert_eq!(depth, 0, "{name}: a block is never closed");
    }
}

/// Renders the `patd.toml` the ConfigMap carries for `values`: the template is
/// lines with `{{ .Values.x }}` / `{{ .x }}` (inside `range`), `| quote`, and
/// `if` / `range` blocks, so a line-wise renderer is exact for it (and refuses
/// anything else).
fn render_config(values: &Value) -> String {
    let configmap = template("configmap.yaml");
    let body = configmap
        .split("patd.toml: |\n")
        .nth(1)
        .expect("the ConfigMap carries patd.toml");
    let lines: Vec<&str> = body.lines().map(str::trim).collect();
    let mut out = String::new();
    render_lines(&lines, values, values, &mut out);
    out
}

/// A float64 as Go's `%v` prints it: `%g` with the shortest digits, switching to
/// an exponent from 1e+06 on (1000000 is `1e+06`, 131072 stays `131072`).
fn go_float(value: f64) -> String {
    assert_eq!(
        value.fract(),
        0.0,
        "only whole numbers occur in these values"
    );
    let digits = format!("{}", value.abs() as u64);
    let exponent = digits.len() - 1;
    let sign = if value < 0.0 { "-" } else { "" };
    if exponent < 6 {
        return format!("{sign}{digits}");
    }
    let mantissa = digits.trim_end_matches('0');
    let (first, rest) = mantissa.split_at(1);
    let fraction = if rest.is_empty() {
        String::new()
    } else {
        format!(".{rest}")
    };
    format!("{sign}{first}{fraction}e+{exponent:02}")
}

#[test]
fn numbers_render_as_helm_prints_them() {
    assert_eq!(go_float(1_000_000.0), "1e+06");
    assert_eq!(go_float(1_234_567.0), "1.234567e+06");
    assert_eq!(go_float(131_072.0), "131072");
    // So every number patd reads as an integer goes through int64 in the template.
    let configmap = template("configmap.yaml");
    for line in configmap.lines().filter(|line| line.contains(" = {{ .")) {
        let quoted = line.contains("| quote");
        let boolean = line.contains("preloadCache");
        assert!(
            quoted || boolean || line.contains("| int64"),
            "a number rendered without int64: {line}"
        );
    }
}

/// The value a template path names: `.Values.a.b` from the root, `.a` from `dot`.
fn resolve<'a>(path: &str, root: &'a Value, dot: &'a Value) -> Option<&'a Value> {
    if path == "." {
        return Some(dot);
    }
    match path.strip_prefix(".Values.") {
        Some(path) => lookup(root, path),
        None => lookup(dot, path.strip_prefix('.').expect("a path")),
    }
}

/// The index just past the `end` that closes the block opened before `lines[0]`.
fn block_end(lines: &[&str]) -> usize {
    let mut depth = 1;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("{{- if ") || line.starts_with("{{- range ") {
            depth += 1;
        } else if *line == "{{- end }}" {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
    }
    panic!("unclosed block");
}

fn render_lines(lines: &[&str], root: &Value, dot: &Value, out: &mut String) {
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let opened = |keyword: &str| {
            line.strip_prefix(keyword)
                .and_then(|rest| rest.strip_suffix(" }}"))
        };
        if let Some(condition) = opened("{{- if ") {
            let end = i + 1 + block_end(&lines[i + 1..]);
            let truthy = resolve(condition, root, dot).is_some_and(|value| {
                // Go templates' truth: zero values are false.
                !matches!(value, Value::Bool(false) | Value::Null)
                    && value.as_str() != Some("")
                    && value.as_i64() != Some(0)
                    && value.as_array().is_none_or(|a| !a.is_empty())
            });
            if truthy {
                render_lines(&lines[i + 1..end], root, dot, out);
            }
            i = end + 1;
            continue;
        }
        if let Some(list) = opened("{{- range ") {
            let end = i + 1 + block_end(&lines[i + 1..]);
            let items = resolve(list, root, dot)
                .and_then(Value::as_array)
                .expect("a list");
            for item in items {
                render_lines(&lines[i + 1..end], root, item, out);
            }
            i = end + 1;
            continue;
        }
        let mut rendered = line.to_owned();
        while let Some(start) = rendered.find("{{ .") {
            let end = start + rendered[start..].find("}}").unwrap() + 2;
            let action = rendered[start + 3..end - 2].trim().to_owned();
            let (path, pipe) = match action.split_once(" | ") {
                Some((path, pipe)) => (path, Some(pipe)),
                None => (action.as_str(), None),
            };
            let value = resolve(path, root, dot).unwrap_or_else(|| panic!("{path} exists"));
            let text = match (value, pipe) {
                (Value::String(s), Some("quote")) => serde_json::to_string(s).unwrap(),
                (Value::String(s), None) => s.clone(),
                (Value::Number(n), Some("int64")) => n.as_f64().unwrap().trunc().to_string(),
                // Helm reads YAML numbers as float64 and prints them with Go's %v.
                (Value::Number(n), None) => go_float(n.as_f64().unwrap()),
                (Value::Bool(b), None) => b.to_string(),
                (other, pipe) => panic!("the renderer does not know {other} | {pipe:?}"),
            };
            rendered.replace_range(start..end, &text);
        }
        assert!(!rendered.contains("{{"), "unrendered action in {line}");
        out.push_str(&rendered);
        out.push('\n');
        i += 1;
    }
}

fn load_rendered(values: &Value) -> Result<Config, String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), render_config(values)).unwrap();
    Config::load(Overrides {
        config_file: Some(file.path().to_owned()),
        ..Overrides::default()
    })
}

#[test]
fn the_rendered_configuration_is_one_patd_accepts() {
    let values = default_values();
    let config = load_rendered(&values).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        u64::from(config.listen.port()),
        lookup(&values, "service.port").unwrap().as_u64().unwrap(),
        "patd listens on the port the Service and probes use"
    );
    assert!(
        config.listen.ip().is_unspecified(),
        "reachable from the pod network"
    );
    let grace = lookup(&values, "config.shutdownGraceSeconds")
        .unwrap()
        .as_u64()
        .unwrap();
    assert_eq!(config.server.shutdown_grace, Duration::from_secs(grace));
    assert_eq!(
        config.max_connections,
        lookup(&values, "config.maxConnections")
            .unwrap()
            .as_u64()
            .unwrap() as u32
    );

    let tuned = with(&values, "config.changePollInterval", Some(json!("250ms")));
    let tuned = with(&tuned, "config.tokenPrefix", Some(json!("acme_")));
    let config = load_rendered(&tuned).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        config.server.change_poll_interval,
        Duration::from_millis(250)
    );
    assert_eq!(config.token_format().prefix(), "acme_");
    assert_eq!(config.metrics_listen, None, "metrics are off by default");

    let credential = patd::api::auth::generate_service_credential();
    let hash = patd::api::auth::service_credential_hash(&credential)
        .to_hex()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let secured = with(&values, "tls.enabled", Some(json!(true)));
    let secured = with(&secured, "tls.secretName", Some(json!("patd-tls")));
    let secured = with(&secured, "tls.clientAuth", Some(json!("required")));
    let secured = with(&secured, "introspectionCallers", Some(json!("trusted")));
    let secured = with(
        &secured,
        "trustedCallers",
        Some(json!([
            { "name": "portal", "credentialHash": hash },
            { "name": "mesh", "clientCertDnsName": "envoy.mesh.svc" },
        ])),
    );
    assert_eq!(schema_errors(&secured), None);
    let rendered = render_config(&secured);
    let config = load_rendered(&secured).unwrap_or_else(|err| panic!("{err}\n{rendered}"));
    let tls = config.tls.expect("TLS configured");
    assert_eq!(tls.cert_file, Path::new("/etc/patd/tls/tls.crt"));
    assert_eq!(
        tls.client_ca_file.as_deref(),
        Some(Path::new("/etc/patd/tls/ca.crt"))
    );
    assert_eq!(tls.client_auth, patd::serve::tls::ClientAuth::Required);
    assert_eq!(
        u64::from(
            config
                .health_listen
                .expect("a plaintext health port")
                .port()
        ),
        lookup(&values, "tls.healthPort").unwrap().as_u64().unwrap(),
        "probes reach the health port the chart opens"
    );
    assert!(format!("{:?}", config.server.callers).contains("portal"));
    drop(dir);

    let governed = with(
        &values,
        "policy",
        Some(json!({
            "maxLifetime": "365d",
            "defaultLifetime": "90d",
            "maxActiveTokensPerSubject": 0,
            "accounts": [
                { "name": "acme", "maxLifetime": "30d", "defaultLifetime": "7d" },
                { "name": "globex", "maxActiveTokensPerSubject": 5 },
            ],
        })),
    );
    assert_eq!(schema_errors(&governed), None);
    let config = load_rendered(&governed).unwrap_or_else(|err| panic!("{err}"));
    let day = |days: u64| Some(Duration::from_secs(days * 86_400));
    let acme = config.server.policy.limits("acme");
    assert_eq!(
        (acme.max_lifetime, acme.default_lifetime),
        (day(30), day(7))
    );
    let globex = config.server.policy.limits("globex");
    assert_eq!(globex.max_active_tokens_per_subject, Some(5));
    assert_eq!(globex.max_lifetime, day(365), "inherited from the defaults");
    let other = config.server.policy.limits("other");
    assert_eq!(
        (other.default_lifetime, other.max_active_tokens_per_subject),
        (day(90), None)
    );

    let scraped = with(&values, "metrics.enabled", Some(json!(true)));
    let config = load_rendered(&scraped).unwrap_or_else(|err| panic!("{err}"));
    let metrics = config.metrics_listen.expect("metrics_listen is rendered");
    assert_eq!(
        u64::from(metrics.port()),
        lookup(&values, "metrics.port").unwrap().as_u64().unwrap(),
        "patd serves metrics where the Service and ServiceMonitor look"
    );
    assert_eq!(config.http_listen, None, "HTTP is off by default");
    let http = with(&values, "http.enabled", Some(json!(true)));
    let config = load_rendered(&http).unwrap_or_else(|err| panic!("{err}"));
    let listen = config.http_listen.expect("http_listen is rendered");
    assert_eq!(
        u64::from(listen.port()),
        lookup(&values, "http.port").unwrap().as_u64().unwrap(),
        "patd serves HTTP where the Service looks"
    );
    assert!(
        config.server.trusted_proxies.is_empty(),
        "no proxy is trusted by default"
    );
    let proxies = with(
        &http,
        "http.trustedProxies",
        Some(json!(["10.0.0.0/8", "fd00::/8"])),
    );
    let config = load_rendered(&proxies).unwrap_or_else(|err| panic!("{err}"));
    let trusted = &config.server.trusted_proxies;
    assert!(
        trusted.allows("10.1.2.3".parse().unwrap()) && trusted.allows("fd00::1".parse().unwrap())
    );
    assert!(!trusted.allows("192.0.2.1".parse().unwrap()));
}

/// The YAML block that follows `key:` in `text`, up to the next line indented
/// no deeper than the key.
fn block<'a>(text: &'a str, key: &str) -> &'a str {
    let start = text.find(key).unwrap_or_else(|| panic!("{key} missing"));
    let indent = text[..start].len() - text[..start].rfind('\n').map_or(0, |i| i + 1);
    let body = &text[start + key.len()..];
    let mut end = body.len();
    let mut offset = 0;
    for line in body.split_inclusive('\n').skip(1) {
        offset += line.len();
        let trimmed = line.trim_start();
        if !trimmed.is_empty() && line.len() - trimmed.len() <= indent {
            end = offset - line.len();
            break;
        }
    }
    let first_line = body.find('\n').map_or(body.len(), |i| i + 1);
    &body[..end.max(first_line)]
}

#[test]
fn deployment_probes_are_native_grpc_on_the_numeric_port() {
    let deployment = template("deployment.yaml");
    for (probe, service) in [
        ("startupProbe:", "service: liveness"),
        ("livenessProbe:", "service: liveness"),
        ("readinessProbe:", "service: \"\""),
    ] {
        let body = block(&deployment, probe);
        assert!(body.contains("grpc:"), "{probe} is a gRPC probe:\n{body}");
        assert!(
            body.contains("port: {{ include \"patd.probePort\" . }}"),
            "{probe} uses the probe port:\n{body}"
        );
        assert!(
            body.contains(service),
            "{probe} asks for {service}:\n{body}"
        );
        for other in ["httpGet", "tcpSocket", "exec"] {
            assert!(!body.contains(other), "{probe} uses {other}");
        }
    }
    let ports = block(&deployment, "ports:");
    assert!(
        ports.contains("name: grpc") && ports.contains("containerPort: {{ .Values.service.port }}")
    );
    // The probe port is a number: the service port, or with TLS the plaintext
    // health port (probes cannot speak TLS); the schema makes both integers.
    let helpers = template("_helpers.tpl");
    assert!(helpers.contains(
        "{{- if .Values.tls.enabled }}{{ .Values.tls.healthPort }}{{ else }}{{ .Values.service.port }}{{ end }}"
    ));
    let values = default_values();
    for bad in ["service.port", "tls.healthPort"] {
        assert!(schema_errors(&with(&values, bad, Some(json!("grpc")))).is_some());
    }
    // The liveness probe's health name is one the server keeps SERVING.
    assert_eq!(patd::serve::LIVENESS_SERVICE, "liveness");
}

#[test]
fn deployment_is_hardened_and_drains_before_it_is_killed() {
    let deployment = template("deployment.yaml");
    for needed in [
        "type: RollingUpdate",
        "securityContext:\n        {{- toYaml .Values.podSecurityContext",
        "{{- toYaml .Values.securityContext | nindent 12 }}",
        "terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}",
        "{{- include \"patd.checkTermination\" . }}",
        "seconds: {{ .Values.preStopSleepSeconds }}",
        "{{- toYaml .Values.resources | nindent 12 }}",
        "- --no-migrate",
        "{{- include \"patd.databaseEnv\" . | nindent 12 }}",
        "checksum/config:",
    ] {
        assert!(
            deployment.contains(needed),
            "deployment.yaml lacks {needed:?}"
        );
    }
    let values = default_values();
    let number = |path: &str| lookup(&values, path).unwrap().as_u64().unwrap();
    assert!(
        number("terminationGracePeriodSeconds")
            > number("preStopSleepSeconds") + number("config.shutdownGraceSeconds"),
        "the defaults let a pod finish draining"
    );
    assert_eq!(
        lookup(&values, "securityContext.readOnlyRootFilesystem"),
        Some(&json!(true))
    );
    let helpers = template("_helpers.tpl");
    assert!(helpers.contains("fail (printf \"terminationGracePeriodSeconds"));
    assert!(helpers.contains("- name: PATD_DATABASE_URL\n  valueFrom:\n    secretKeyRef:"));
    assert!(
        helpers
            .contains("fail \"set database.url (a postgres:// URL) or database.existingSecret\"")
    );
    // The database URL never appears inline in a pod spec, only as a Secret reference.
    for (name, text) in templates() {
        if name != "secret.yaml" && text.contains(".Values.database.url") {
            assert!(
                !text.contains("value: {{ .Values.database.url"),
                "{name} puts the URL inline"
            );
        }
    }
}

#[test]
fn chart_has_every_object_a_fleet_needs() {
    let chart: Value = serde_yaml_ng::from_str(&read("Chart.yaml")).unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "patd");
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "the chart deploys this release"
    );
    let expected = [
        ("deployment.yaml", "apps/v1", "Deployment"),
        ("service.yaml", "v1", "Service"),
        ("service-headless.yaml", "v1", "Service"),
        ("configmap.yaml", "v1", "ConfigMap"),
        ("secret.yaml", "v1", "Secret"),
        ("serviceaccount.yaml", "v1", "ServiceAccount"),
        ("hpa.yaml", "autoscaling/v2", "HorizontalPodAutoscaler"),
        ("pdb.yaml", "policy/v1", "PodDisruptionBudget"),
        (
            "servicemonitor.yaml",
            "monitoring.coreos.com/v1",
            "ServiceMonitor",
        ),
        (
            "networkpolicy.yaml",
            "networking.k8s.io/v1",
            "NetworkPolicy",
        ),
        ("migration-job.yaml", "batch/v1", "Job"),
        ("tests/test-health.yaml", "v1", "Pod"),
    ];
    for (file, api_version, kind) in expected {
        let text = template(file);
        assert!(
            text.contains(&format!("apiVersion: {api_version}\nkind: {kind}\n")),
            "{file} is not a {api_version} {kind}"
        );
    }
    assert!(!template("NOTES.txt").is_empty());

    for service in ["service.yaml", "service-headless.yaml"] {
        let text = template(service);
        assert!(
            text.contains("- name: grpc\n      port: {{ .Values.service.port }}"),
            "{service}"
        );
    }
    assert!(template("service-headless.yaml").contains("clusterIP: None"));

    let job = template("migration-job.yaml");
    assert!(job.contains("\"helm.sh/hook\": pre-install,pre-upgrade"));
    assert!(job.contains("args: [\"migrate\"]"));
    // The Secret it reads must exist before it: a hook of lower weight.
    let secret = template("secret.yaml");
    assert!(secret.contains("\"helm.sh/hook\": pre-install,pre-upgrade"));
    assert!(secret.contains("\"helm.sh/hook-weight\": \"-10\""));
    assert!(job.contains("\"helm.sh/hook-weight\": \"0\""));

    let test_pod = template("tests/test-health.yaml");
    assert!(test_pod.contains("\"helm.sh/hook\": test"));
    assert!(
        test_pod.contains("- health\n"),
        "the test pod runs `patd health`"
    );
    // The pods of hooks carry labels of their own (the Job object may carry the
    // release's): Services, the PDB and the HPA must not count them.
    let job_pod = job.split("\n  template:\n").nth(1).expect("a pod template");
    for pod in [job_pod, test_pod.as_str()] {
        assert!(
            !pod.contains("patd.labels") && !pod.contains("patd.selectorLabels"),
            "{pod}"
        );
    }
    // `kubectl exec … patd admin` must read the same configuration as the server.
    assert!(
        template("deployment.yaml")
            .contains("- name: PATD_CONFIG\n              value: /etc/patd/patd.toml")
    );
    assert!(
        template("_helpers.tpl").contains("clientCertDnsName needs tls.enabled and tls.clientAuth")
    );
}

#[test]
fn dockerfile_builds_a_non_root_image_of_this_binary() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile.split("\nFROM ").collect();
    assert!(stages.len() >= 2, "multi-stage");
    let runtime = stages.last().unwrap();
    assert!(
        runtime.starts_with("gcr.io/distroless/"),
        "small runtime image"
    );
    let values = default_values();
    let uid = lookup(&values, "podSecurityContext.runAsUser").unwrap();
    assert!(
        runtime.contains(&format!("USER {uid}:{uid}")),
        "the image runs as the chart's non-root user"
    );
    assert!(runtime.contains("ENTRYPOINT [\"/usr/local/bin/patd\"]"));
    let port = lookup(&values, "service.port").unwrap();
    assert!(runtime.contains(&format!("EXPOSE {port}")));
    assert!(
        !runtime.contains("ENV PATD_"),
        "PATD_* in the image would override the chart's configuration file"
    );
}

#[test]
fn webhooks_render_with_their_secret_mounted_not_inlined() {
    let values = default_values();
    let hooked = with(
        &values,
        "webhooks",
        Some(json!([
            { "name": "siem", "url": "https://siem.example/hook", "secretName": "patd-siem",
              "events": ["token.revoked", "token.leak_reported"], "accounts": ["acme"], "timeout": "3s" },
            { "name": "owners", "url": "http://notifier.example/patd", "secretName": "patd-owners" },
        ])),
    );
    assert_eq!(schema_errors(&hooked), None);
    let bad = with(
        &values,
        "webhooks",
        Some(json!([{ "name": "x", "url": "ftp://x", "secretName": "s" }])),
    );
    assert!(schema_errors(&bad).is_some(), "only http(s) URLs");
    let bad = with(
        &values,
        "webhooks",
        Some(
            json!([{ "name": "x", "url": "http://x", "secretName": "s", "events": ["token.nope"] }]),
        ),
    );
    assert!(schema_errors(&bad).is_some(), "only known event types");
    let rendered = render_config(&hooked);
    // The secret is a file from the mounted Secret; here, one of the test's.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(
        &secret,
        "whsec_dGVzdC1zaWduaW5nLXNlY3JldC1vZi0zMi1ieXRlcyE=\n",
    )
    .unwrap();
    for name in ["siem", "owners"] {
        let mounted = format!("/etc/patd/webhooks/{name}/secret");
        assert!(rendered.contains(&mounted), "{rendered}");
    }
    let local = rendered
        .replace(
            "/etc/patd/webhooks/siem/secret",
            &secret.display().to_string(),
        )
        .replace(
            "/etc/patd/webhooks/owners/secret",
            &secret.display().to_string(),
        );
    let config = Config::from_file_text(&local).unwrap_or_else(|err| panic!("{err}\n{rendered}"));
    let hooks = &config.server.webhooks;
    assert_eq!(hooks.endpoints.len(), 2);
    assert_eq!(
        hooks.endpoints[0].events,
        ["token.revoked", "token.leak_reported"]
    );
    assert_eq!(hooks.endpoints[0].accounts, ["acme"]);
    assert_eq!(hooks.endpoints[0].timeout, Duration::from_secs(3));
    assert_eq!(hooks.endpoints[1].events.len(), 11, "every type by default");
    assert_eq!(
        hooks.reminders.leads,
        [Duration::from_secs(86_400), Duration::from_secs(7 * 86_400)]
    );
    let deployment = template("deployment.yaml");
    assert!(
        deployment.contains("secretName: {{ .secretName }}"),
        "{deployment}"
    );
}
