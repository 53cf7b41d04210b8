//! What each client command does: one call (or one page after another) and
//! its output.

use std::io::{BufRead, IsTerminal};

use serde_json::json;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::cli::output::shown;
use patd::domain::clock;
use patd_client::proto;

use super::print::*;
use super::*;

/// A server that hands back the page token it was given would make paging spin.
fn ensure_progress(previous: &str, next: &str) -> Result<(), ClientError> {
    if previous == next {
        return Err(ClientError::new(
            exit::FAILED,
            "the server returned the same page token twice; stopping",
        ));
    }
    Ok(())
}

/// The token to introspect: one line of stdin.
fn read_presented_token() -> Result<String, ClientError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        note!("token: ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).map_err(|err| {
        ClientError::new(
            exit::FAILED,
            format!("cannot read the token from stdin: {err}"),
        )
    })?;
    let token = line.trim().to_owned();
    if token.is_empty() {
        return Err(ClientError::new(
            exit::INVALID,
            "no token on stdin: pipe it in, e.g. `printenv TOKEN | patd introspect`",
        ));
    }
    Ok(token)
}

pub async fn run(command: ClientCommand) -> ClientResult {
    match command {
        ClientCommand::Create { auth, token } => {
            let expires_at = token
                .expiry_micros()
                .map_err(|err| ClientError::new(exit::INVALID, err))?
                .map(clock::to_timestamp);
            let request = proto::CreateTokenRequest {
                name: token.name,
                scopes: token.scopes,
                expires_at,
                allowed_cidrs: token.allowed_cidrs,
                description: token.description,
                labels: token.labels.into_iter().collect(),
                resources: token.resources,
            };
            let created = authed(&auth).await?.create_token(request).await?;
            print_created(&created, auth.json);
            Ok(())
        }
        ClientCommand::List {
            auth,
            page_size,
            state,
            name_contains,
            label_selector,
            order,
        } => {
            let state = match state {
                None => proto::TokenState::Unspecified,
                Some(StateFilter::Active) => proto::TokenState::Active,
                Some(StateFilter::Expired) => proto::TokenState::Expired,
                Some(StateFilter::Revoked) => proto::TokenState::Revoked,
                Some(StateFilter::Suspended) => proto::TokenState::Suspended,
            };
            let order = match order {
                ListOrder::CreatedDesc => proto::TokenOrder::CreatedDesc,
                ListOrder::CreatedAsc => proto::TokenOrder::CreatedAsc,
                ListOrder::ExpiresAsc => proto::TokenOrder::ExpiresAsc,
                ListOrder::LastUsedDesc => proto::TokenOrder::LastUsedDesc,
                ListOrder::NameAsc => proto::TokenOrder::NameAsc,
            };
            let client = authed(&auth).await?;
            let mut page_token = String::new();
            if !auth.json {
                out!(
                    "{:<22}  {:<8}  {:<24}  {:<20}  {:<20}  SCOPES",
                    "ID",
                    "STATE",
                    "NAME",
                    "EXPIRES",
                    "LAST USED"
                );
            }
            loop {
                let request = proto::ListTokensRequest {
                    page_size,
                    page_token: page_token.clone(),
                    state: state.into(),
                    name_contains: name_contains.clone().unwrap_or_default(),
                    label_selector: label_selector.clone().unwrap_or_default(),
                    order_by: order.into(),
                    ..Default::default()
                };
                let page = client.list_tokens(request).await?;
                for token in &page.tokens {
                    if auth.json {
                        // One object per line: streams, and `jq` reads it as is.
                        out!("{}", token_json(token));
                    } else {
                        out!(
                            "{:<22}  {:<8}  {:<24}  {:<20}  {:<20}  {}",
                            shown(&token.id),
                            state_name(token),
                            shown(&token.name),
                            time(token.expires_at.as_ref()).unwrap_or_else(|| "never".to_owned()),
                            time(token.last_used_at.as_ref()).unwrap_or_else(|| "never".to_owned()),
                            shown(&token.scopes.join(" ")),
                        );
                    }
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                ensure_progress(&page_token, &page.next_page_token)?;
                page_token = page.next_page_token;
            }
        }
        ClientCommand::Get { auth, id } => {
            print_token(&authed(&auth).await?.get_token(&id).await?, auth.json);
            Ok(())
        }
        ClientCommand::Rotate {
            auth,
            id,
            grace,
            expires_in,
        } => {
            let client = authed(&auth).await?;
            let grace_period = grace
                .map(prost_types::Duration::try_from)
                .transpose()
                .map_err(|_| ClientError::new(exit::INVALID, "--grace is too long"))?;
            let expires_at = expires_in.map(|lifetime| {
                let micros = i64::try_from(lifetime.as_micros()).unwrap_or(i64::MAX);
                clock::to_timestamp(clock::now_micros().saturating_add(micros))
            });
            let rotated = match id {
                Some(id) => {
                    let request = proto::RotateTokenRequest {
                        id,
                        expires_at,
                        grace_period,
                    };
                    client.rotate_token(request).await?
                }
                None => {
                    let request = proto::RotateSelfRequest {
                        expires_at,
                        grace_period,
                    };
                    client.rotate_self(request).await?
                }
            };
            print_created(&rotated, auth.json);
            Ok(())
        }
        ClientCommand::Whoami { auth } => {
            print_token(&authed(&auth).await?.get_self().await?, auth.json);
            Ok(())
        }
        ClientCommand::Events { auth, limit } => {
            let client = authed(&auth).await?;
            let mut page_token = String::new();
            let mut listed = 0;
            if !auth.json {
                out!(
                    "{:<27}  {:<14}  {:<22}  {:<30}  {:<21}  DETAIL",
                    "TIME",
                    "KIND",
                    "TOKEN",
                    "ACTOR",
                    "PEER"
                );
            }
            while listed < limit {
                let request = proto::ListTokenEventsRequest {
                    page_size: i32::try_from((limit - listed).min(1000)).unwrap_or(1000),
                    page_token: page_token.clone(),
                };
                let page = client.list_token_events(request).await?;
                for event in &page.events {
                    let at = time(event.time.as_ref()).unwrap_or_default();
                    if auth.json {
                        out!(
                            "{}",
                            json!({
                                "time": at,
                                "kind": event.kind,
                                "token_id": event.token_id,
                                "subject": event.subject,
                                "account": event.account,
                                "actor": event.actor,
                                "peer": event.peer,
                                "detail": event.detail,
                            })
                        );
                    } else {
                        out!(
                            "{at:<27}  {:<14}  {:<22}  {:<30}  {:<21}  {}",
                            shown(&event.kind),
                            shown(&event.token_id),
                            shown(&event.actor),
                            shown(&event.peer),
                            shown(&event.detail)
                        );
                    }
                }
                listed += page.events.len();
                if page.next_page_token.is_empty() || page.events.is_empty() {
                    break;
                }
                ensure_progress(&page_token, &page.next_page_token)?;
                page_token = page.next_page_token;
            }
            Ok(())
        }
        ClientCommand::ReportLeak { conn, source } => {
            // Every line or an error: a report must not silently leave tokens out.
            let lines: Vec<String> = std::io::stdin()
                .lock()
                .lines()
                .collect::<Result<_, _>>()
                .map_err(|err| {
                    ClientError::new(
                        exit::FAILED,
                        format!("cannot read tokens from stdin: {err}"),
                    )
                })?;
            let tokens: Vec<String> = lines
                .iter()
                .map(|line| line.trim().to_owned())
                .filter(|line| !line.is_empty())
                .collect();
            let client = connect(&conn, None).await?;
            let mut received = 0;
            // The server takes at most 1,000 per report.
            for chunk in tokens.chunks(1000) {
                let request = proto::ReportLeakedTokensRequest {
                    tokens: chunk.to_vec(),
                    source: source.clone(),
                };
                received += client.report_leaked_tokens(request).await?.received;
            }
            out!("reported {received} tokens; every valid one is now revoked");
            Ok(())
        }
        ClientCommand::Revoke { auth, id } => {
            print_token(&authed(&auth).await?.revoke_token(&id).await?, auth.json);
            Ok(())
        }
        ClientCommand::Update {
            auth,
            id,
            name,
            description,
            labels,
            clear_labels,
        } => {
            let mut paths = Vec::new();
            if name.is_some() {
                paths.push("name");
            }
            if description.is_some() {
                paths.push("description");
            }
            if !labels.is_empty() || clear_labels {
                paths.push("labels");
            }
            if paths.is_empty() {
                return Err(ClientError::new(
                    exit::INVALID,
                    "nothing to update: give --name, --description, --label or --clear-labels",
                ));
            }
            let token = proto::Token {
                name: name.unwrap_or_default(),
                description: description.unwrap_or_default(),
                labels: labels.into_iter().collect(),
                ..Default::default()
            };
            let updated = authed(&auth)
                .await?
                .update_token(&id, token, &paths)
                .await?;
            print_token(&updated, auth.json);
            Ok(())
        }
        ClientCommand::Suspend { auth, id } => {
            print_token(&authed(&auth).await?.suspend_token(&id).await?, auth.json);
            Ok(())
        }
        ClientCommand::Resume { auth, id } => {
            print_token(&authed(&auth).await?.resume_token(&id).await?, auth.json);
            Ok(())
        }
        ClientCommand::RevokeAll {
            auth,
            subject,
            account,
        } => {
            let revoked = authed(&auth)
                .await?
                .revoke_all_tokens(&subject, &account)
                .await?;
            if auth.json {
                out!("{}", json!({ "revoked_count": revoked }));
            } else {
                out!("{revoked}");
            }
            Ok(())
        }
        ClientCommand::Delete { auth, id } => {
            authed(&auth).await?.delete_token(&id).await?;
            if auth.json {
                out!("{}", json!({ "deleted": id }));
            } else {
                out!("deleted {id}");
            }
            Ok(())
        }
        ClientCommand::Introspect {
            conn,
            require,
            client_ip,
            resource,
            json,
        } => {
            let token = read_presented_token()?;
            let request = proto::IntrospectRequest {
                token,
                required_scopes: require,
                client_ip: client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                resource: resource.unwrap_or_default(),
            };
            let answer = connect(&conn, None)
                .await?
                .introspect_request(request)
                .await?;
            if json {
                out!(
                    "{}",
                    if answer.active {
                        json!({
                            "active": true,
                            "token_id": answer.token_id,
                            "name": answer.name,
                            "subject": answer.subject,
                            "account": answer.account,
                            "scopes": answer.scopes,
                            "issued_at": time(answer.issued_at.as_ref()),
                            "expires_at": time(answer.expires_at.as_ref()),
                            "missing_scopes": answer.missing_scopes,
                            "resources": answer.resources,
                            "resource_denied": answer.resource_denied,
                        })
                    } else {
                        json!({ "active": false })
                    }
                );
            } else if answer.active {
                out!(
                    "active:       true\ntoken id:     {}\nname:         {}\nowner:        {} @ {}\nscopes:       {}\nexpires:      {}",
                    shown(&answer.token_id),
                    shown(&answer.name),
                    shown(&answer.subject),
                    shown(&answer.account),
                    shown(&answer.scopes.join(" ")),
                    time(answer.expires_at.as_ref()).unwrap_or_else(|| "never".to_owned()),
                );
                if !answer.missing_scopes.is_empty() {
                    out!("missing:      {}", shown(&answer.missing_scopes.join(" ")));
                }
                if !answer.resources.is_empty() {
                    out!("resources:    {}", shown(&answer.resources.join(" ")));
                }
                if answer.resource_denied {
                    out!("resource:     denied");
                }
            } else {
                out!("active:       false");
            }
            if !answer.active {
                return Err(ClientError::new(exit::INACTIVE, "the token is not active"));
            }
            if !answer.missing_scopes.is_empty() {
                return Err(ClientError::new(
                    exit::INACTIVE,
                    format!("the token lacks {}", answer.missing_scopes.join(", ")),
                ));
            }
            if answer.resource_denied {
                return Err(ClientError::new(
                    exit::INACTIVE,
                    "the token is not allowed on that resource",
                ));
            }
            Ok(())
        }
        ClientCommand::Scopes { conn, json } => {
            let scopes = connect(&conn, None).await?.list_scopes().await?;
            for scope in scopes {
                if json {
                    out!(
                        "{}",
                        json!({ "name": scope.name, "description": scope.description })
                    );
                } else {
                    out!("{:<32}  {}", shown(&scope.name), shown(&scope.description));
                }
            }
            Ok(())
        }
    }
}

/// Asks `grpc.health.v1.Health/Check` and prints the status; succeeds only on
/// SERVING, so scripts, `helm test` and container health checks can rely on it.
pub async fn health(args: HealthArgs) -> ClientResult {
    let channel = connect(&args.conn, None).await?.channel();
    let request = HealthCheckRequest {
        service: args.service.clone(),
    };
    let status = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|status| {
            let mut err = ClientError::from(status);
            err.message = format!("health check of {:?} failed: {}", args.service, err.message);
            err
        })?
        .into_inner()
        .status();
    out!("{}", status.as_str_name());
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(ClientError::new(
            exit::NOT_SERVING,
            format!("{:?} is {}", args.service, status.as_str_name()),
        ))
    }
}
