//! How the client shows tokens: `key: value` lines, or one JSON object.

use serde_json::{Value, json};

use crate::cli::output::shown;
use patd::domain::clock;
use patd_client::proto;

pub(super) fn time(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    timestamp
        .and_then(clock::from_timestamp)
        .map(clock::rfc3339)
}

pub(super) fn state_name(token: &proto::Token) -> &'static str {
    match token.state() {
        proto::TokenState::Active => "active",
        proto::TokenState::Expired => "expired",
        proto::TokenState::Revoked => "revoked",
        proto::TokenState::Suspended => "suspended",
        proto::TokenState::Unspecified => "unknown",
    }
}

pub(super) fn token_json(token: &proto::Token) -> Value {
    json!({
        "id": token.id,
        "name": token.name,
        "subject": token.subject,
        "account": token.account,
        "scopes": token.scopes,
        "state": state_name(token),
        "hint": token.hint,
        "created_at": time(token.created_at.as_ref()),
        "expires_at": time(token.expires_at.as_ref()),
        "revoked_at": time(token.revoked_at.as_ref()),
        "last_used_at": time(token.last_used_at.as_ref()),
        "last_used_ip": token.last_used_ip,
        "rotated_at": time(token.rotated_at.as_ref()),
        "allowed_cidrs": token.allowed_cidrs,
        "suspended_at": time(token.suspended_at.as_ref()),
        "description": token.description,
        "labels": token.labels,
        "resources": token.resources,
    })
}

/// One token as `key: value` lines.
pub(super) fn token_text(token: &proto::Token) -> String {
    let or = |value: Option<String>, none: &str| value.unwrap_or_else(|| none.to_owned());
    let mut labels: Vec<String> = token
        .labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    labels.sort();
    let mut extra = String::new();
    for (heading, value) in [
        ("description:  ", token.description.clone()),
        ("labels:       ", labels.join(",")),
        ("resources:    ", token.resources.join(" ")),
    ] {
        if !value.is_empty() {
            extra.push_str(&format!("\n{heading}{}", shown(&value)));
        }
    }
    format!(
        "id:           {}\nname:         {}\nowner:        {} @ {}\nstate:        {}\nscopes:       {}\nhint:         {}\ncreated:      {}\nexpires:      {}\nrevoked:      {}\nlast used:    {}{}\nrotated:      {}\nallowed from: {}{extra}",
        shown(&token.id),
        shown(&token.name),
        shown(&token.subject),
        shown(&token.account),
        state_name(token),
        shown(&token.scopes.join(" ")),
        shown(&token.hint),
        or(time(token.created_at.as_ref()), "-"),
        or(time(token.expires_at.as_ref()), "never"),
        or(time(token.revoked_at.as_ref()), "-"),
        or(time(token.last_used_at.as_ref()), "never"),
        if token.last_used_ip.is_empty() {
            String::new()
        } else {
            format!(" from {}", shown(&token.last_used_ip))
        },
        or(time(token.rotated_at.as_ref()), "never"),
        if token.allowed_cidrs.is_empty() {
            "anywhere".to_owned()
        } else {
            shown(&token.allowed_cidrs.join(" ")).into_owned()
        },
    )
}

pub(super) fn print_token(token: &proto::Token, json: bool) {
    if json {
        out!("{}", token_json(token));
    } else {
        out!("{}", token_text(token));
    }
}

/// A new secret: on stdout alone (details on stderr), or all as JSON.
pub(super) fn print_created(created: &proto::CreateTokenResponse, json: bool) {
    let token = created.token.clone().unwrap_or_default();
    if json {
        out!(
            "{}",
            json!({ "token": token_json(&token), "secret": created.secret })
        );
    } else {
        note!("{}", token_text(&token));
        note!("The secret below is shown once; store it now.");
        out!("{}", created.secret);
    }
}
