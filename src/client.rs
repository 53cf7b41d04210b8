//! Commands that talk to a running patd over gRPC, as any API user would, with a
//! token from `PATD_TOKEN` (the operator's `admin` commands, by contrast, open the
//! database directly). Human tables by default, `--json` for scripts, and exit
//! codes scripts can rely on (see [`ClientError`]).

use std::fmt;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::clock;
use crate::grpc::auth::{ACT_AS_ACCOUNT, ACT_AS_SUBJECT};
use crate::output::shown;
use crate::proto;
use crate::proto::introspection_service_client::IntrospectionServiceClient;
use crate::proto::token_service_client::TokenServiceClient;
use crate::{note, out};

/// A failed client command: the message for stderr and the process exit code.
#[derive(Debug)]
pub struct ClientError {
    pub exit_code: u8,
    pub message: String,
}

/// Exit codes, documented in the README. 2 is clap's usage error.
pub mod exit {
    /// Anything else: an internal error, a bad response.
    pub const FAILED: u8 = 1;
    /// No such token (or not yours).
    pub const NOT_FOUND: u8 = 3;
    /// The credential is missing, inactive, or lacks the scope.
    pub const DENIED: u8 = 4;
    /// The server refused the input (bad name, unknown scope, past expiry, …).
    pub const INVALID: u8 = 5;
    /// `introspect`: the token is not active.
    pub const INACTIVE: u8 = 6;
    /// `health`: the server answered but is not SERVING.
    pub const NOT_SERVING: u8 = 7;
    /// Unreachable, overloaded or timed out: retrying later may succeed (EX_TEMPFAIL).
    pub const RETRY: u8 = 75;
}

impl ClientError {
    fn new(exit_code: u8, message: impl Into<String>) -> ClientError {
        ClientError {
            exit_code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClientError {}

impl From<Status> for ClientError {
    fn from(status: Status) -> ClientError {
        let exit_code = match status.code() {
            Code::NotFound => exit::NOT_FOUND,
            Code::Unauthenticated | Code::PermissionDenied => exit::DENIED,
            Code::InvalidArgument
            | Code::OutOfRange
            | Code::FailedPrecondition
            | Code::AlreadyExists => exit::INVALID,
            Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Cancelled => exit::RETRY,
            _ => exit::FAILED,
        };
        ClientError::new(
            exit_code,
            format!("{:?}: {}", status.code(), status.message()),
        )
    }
}

type ClientResult = Result<(), ClientError>;

/// Where the server is and how to reach it.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// The server, as HOST:PORT
    #[arg(long, env = "PATD_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    /// Give up on a call after this long, e.g. 5s
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Connect with TLS, trusting this PEM CA bundle
    #[arg(long, env = "PATD_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// With --ca-file: present this PEM client certificate (mTLS)
    #[arg(
        long,
        env = "PATD_CLIENT_CERT_FILE",
        requires = "ca_file",
        requires = "client_key_file"
    )]
    client_cert_file: Option<PathBuf>,
    /// The private key of --client-cert-file
    #[arg(long, env = "PATD_CLIENT_KEY_FILE", requires = "client_cert_file")]
    client_key_file: Option<PathBuf>,
    /// With --ca-file: the name the server's certificate must carry [default: the host of --addr]
    #[arg(long, env = "PATD_TLS_SERVER_NAME", requires = "ca_file")]
    tls_server_name: Option<String>,
}

/// A caller with a credential.
#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The caller's token (prefer the environment: flags show in `ps`)
    #[arg(long, env = "PATD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Trusted callers only: the subject to act for (with --act-as-account)
    #[arg(long, requires = "act_as_account")]
    act_as_subject: Option<String>,
    /// Trusted callers only: the account to act for
    #[arg(long, requires = "act_as_subject")]
    act_as_account: Option<String>,
}

/// What a new token is, for `create` and the operator's `admin create`.
#[derive(Debug, Args)]
pub struct NewTokenArgs {
    #[arg(long)]
    pub name: String,
    /// Comma-separated scopes, e.g. license:read,tag:read
    #[arg(long, value_delimiter = ',', required = true)]
    pub scopes: Vec<String>,
    /// Lifetime, e.g. 30d, 12h, "1w 2d"
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "expires_at")]
    expires_in: Option<Duration>,
    /// Expiry as RFC 3339, e.g. 2027-01-31T00:00:00Z
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    expires_at: Option<SystemTime>,
    /// Comma-separated CIDR blocks the token may be used from, e.g. 10.0.0.0/8,2001:db8::/32
    #[arg(long, value_delimiter = ',')]
    pub allowed_cidrs: Vec<String>,
}

impl NewTokenArgs {
    /// The expiry in microseconds since the epoch; `None`: never.
    pub fn expiry_micros(&self) -> Result<Option<i64>, String> {
        let at = match self.expires_in {
            Some(lifetime) => Some(SystemTime::now() + lifetime),
            None => self.expires_at,
        };
        at.map(|time| {
            let since_epoch = time
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_err(|_| "expiry is before 1970".to_owned())?;
            i64::try_from(since_epoch.as_micros())
                .map_err(|_| "expiry is too far in the future".to_owned())
        })
        .transpose()
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum StateFilter {
    Active,
    Expired,
    Revoked,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ListOrder {
    CreatedDesc,
    CreatedAsc,
    ExpiresAsc,
    LastUsedDesc,
    NameAsc,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create a token for yourself; prints the secret once, on stdout
    Create {
        #[command(flatten)]
        auth: AuthArgs,
        #[command(flatten)]
        token: NewTokenArgs,
    },
    /// List all your tokens, newest first (pages through everything)
    List {
        #[command(flatten)]
        auth: AuthArgs,
        /// Tokens fetched per call (the server allows up to 1000)
        #[arg(long, default_value_t = 1000)]
        page_size: i32,
        /// Only tokens in this state
        #[arg(long, value_enum)]
        state: Option<StateFilter>,
        /// Only tokens whose name contains this (case-insensitive)
        #[arg(long)]
        name_contains: Option<String>,
        /// Sort order
        #[arg(long, value_enum, default_value = "created-desc")]
        order: ListOrder,
    },
    /// Show one of your tokens
    Get {
        #[command(flatten)]
        auth: AuthArgs,
        id: String,
    },
    /// Give one of your tokens a new secret (printed once, on stdout); without an
    /// id, the token in PATD_TOKEN rotates itself
    Rotate {
        #[command(flatten)]
        auth: AuthArgs,
        id: Option<String>,
        /// How long the old secret keeps working, e.g. 10m (at most 24h) [default: 0]
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<Duration>,
        /// A new lifetime from now, e.g. 90d
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Show the token in PATD_TOKEN itself (needs no particular scope)
    Whoami {
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// The audit trail of your account, newest first (needs eventLog:read)
    Events {
        #[command(flatten)]
        auth: AuthArgs,
        /// Stop after this many events
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Report leaked tokens, one per line on stdin (no credential needed): valid
    /// ones are revoked
    ReportLeak {
        #[command(flatten)]
        conn: ConnArgs,
        /// Where they were found, e.g. a URL
        #[arg(long, default_value = "")]
        source: String,
    },
    /// Revoke one of your tokens (idempotent)
    Revoke {
        #[command(flatten)]
        auth: AuthArgs,
        id: String,
    },
    /// Delete one of your tokens
    Delete {
        #[command(flatten)]
        auth: AuthArgs,
        id: String,
    },
    /// Ask whether a token is active: exit 0 if it is, 6 if not. The token is read
    /// from stdin (one line), so that it never appears in `ps` or shell history.
    Introspect {
        #[command(flatten)]
        conn: ConnArgs,
        /// Scopes the token must grant; missing ones are listed (and exit 6)
        #[arg(long, value_delimiter = ',')]
        require: Vec<String>,
        /// The address the token's user connects from (checked against its allowlist)
        #[arg(long)]
        client_ip: Option<std::net::IpAddr>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// The scope catalog
    Scopes {
        #[command(flatten)]
        conn: ConnArgs,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Health service to ask about: "" for the whole server, `liveness`, or a
    /// service such as pat.v1.IntrospectionService
    #[arg(long, default_value = "")]
    service: String,
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|err| {
        ClientError::new(
            exit::FAILED,
            format!("cannot read {}: {err}", path.display()),
        )
    })
}

async fn connect(conn: &ConnArgs) -> Result<Channel, ClientError> {
    let scheme = if conn.ca_file.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", conn.addr))
        .map_err(|err| {
            ClientError::new(exit::FAILED, format!("bad --addr {:?}: {err}", conn.addr))
        })?
        .connect_timeout(conn.timeout)
        .timeout(conn.timeout);
    if let Some(ca_file) = &conn.ca_file {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca_file)?));
        if let (Some(cert), Some(key)) = (&conn.client_cert_file, &conn.client_key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &conn.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|err| ClientError::new(exit::FAILED, format!("TLS settings: {err}")))?;
    }
    endpoint.connect().await.map_err(|err| {
        ClientError::new(
            exit::RETRY,
            format!("cannot connect to {}: {err}", conn.addr),
        )
    })
}

fn authed<T>(auth: &AuthArgs, message: T) -> Result<Request<T>, ClientError> {
    let token = auth.token.as_deref().ok_or_else(|| {
        ClientError::new(
            exit::DENIED,
            "no credential: set PATD_TOKEN (or --token) to a token with personalAccessToken:write",
        )
    })?;
    let ascii = |value: &str, what: &str| {
        value
            .parse()
            .map_err(|_| ClientError::new(exit::INVALID, format!("{what} is not printable ASCII")))
    };
    let mut request = Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert(
        "authorization",
        ascii(&format!("Bearer {}", token.trim()), "PATD_TOKEN")?,
    );
    if let (Some(subject), Some(account)) = (&auth.act_as_subject, &auth.act_as_account) {
        metadata.insert(ACT_AS_SUBJECT, ascii(subject, "--act-as-subject")?);
        metadata.insert(ACT_AS_ACCOUNT, ascii(account, "--act-as-account")?);
    }
    Ok(request)
}

fn time(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    timestamp
        .and_then(clock::from_timestamp)
        .map(clock::rfc3339)
}

fn state_name(token: &proto::Token) -> &'static str {
    match token.state() {
        proto::TokenState::Active => "active",
        proto::TokenState::Expired => "expired",
        proto::TokenState::Revoked => "revoked",
        proto::TokenState::Unspecified => "unknown",
    }
}

fn token_json(token: &proto::Token) -> Value {
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
    })
}

/// One token as `key: value` lines.
fn token_text(token: &proto::Token) -> String {
    let or = |value: Option<String>, none: &str| value.unwrap_or_else(|| none.to_owned());
    format!(
        "id:           {}\nname:         {}\nowner:        {} @ {}\nstate:        {}\nscopes:       {}\nhint:         {}\ncreated:      {}\nexpires:      {}\nrevoked:      {}\nlast used:    {}{}\nrotated:      {}\nallowed from: {}",
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

fn print_token(token: &proto::Token, json: bool) {
    if json {
        out!("{}", token_json(token));
    } else {
        out!("{}", token_text(token));
    }
}

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

/// A new secret: on stdout alone (details on stderr), or all as JSON.
fn print_created(created: &proto::CreateTokenResponse, json: bool) {
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
            };
            let mut client = TokenServiceClient::new(connect(&auth.conn).await?);
            let created = client
                .create_token(authed(&auth, request)?)
                .await?
                .into_inner();
            print_created(&created, auth.json);
            Ok(())
        }
        ClientCommand::List {
            auth,
            page_size,
            state,
            name_contains,
            order,
        } => {
            let state = match state {
                None => proto::TokenState::Unspecified,
                Some(StateFilter::Active) => proto::TokenState::Active,
                Some(StateFilter::Expired) => proto::TokenState::Expired,
                Some(StateFilter::Revoked) => proto::TokenState::Revoked,
            };
            let order = match order {
                ListOrder::CreatedDesc => proto::TokenOrder::CreatedDesc,
                ListOrder::CreatedAsc => proto::TokenOrder::CreatedAsc,
                ListOrder::ExpiresAsc => proto::TokenOrder::ExpiresAsc,
                ListOrder::LastUsedDesc => proto::TokenOrder::LastUsedDesc,
                ListOrder::NameAsc => proto::TokenOrder::NameAsc,
            };
            let mut client = TokenServiceClient::new(connect(&auth.conn).await?);
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
                    order_by: order.into(),
                    ..Default::default()
                };
                let page = client
                    .list_tokens(authed(&auth, request)?)
                    .await?
                    .into_inner();
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
            let mut client = TokenServiceClient::new(connect(&auth.conn).await?);
            let request = authed(&auth, proto::GetTokenRequest { id })?;
            print_token(&client.get_token(request).await?.into_inner(), auth.json);
            Ok(())
        }
        ClientCommand::Rotate {
            auth,
            id,
            grace,
            expires_in,
        } => {
            let mut client = TokenServiceClient::new(connect(&auth.conn).await?);
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
                    client.rotate_token(authed(&auth, request)?).await?
                }
                None => {
                    let request = proto::RotateSelfRequest {
                        expires_at,
                        grace_period,
                    };
                    client.rotate_self(authed(&auth, request)?).await?
                }
            }
            .into_inner();
            print_created(&rotated, auth.json);
            Ok(())
        }
        ClientCommand::Whoami { auth } => {
            let mut client = TokenServiceClient::new(connect(&auth.conn).await?);
            let request = authed(&auth, proto::GetSelfRequest {})?;
            print_token(&client.get_self(request).await?.into_inner(), auth.json);
            Ok(())
        }
        ClientCommand::Events { auth, limit } => {
            let mut client = TokenServiceClient::new(connect(&auth.conn).await?);
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
                let page = client
                    .list_token_events(authed(&auth, request)?)
                    .await?
                    .into_inner();
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
            let mut client = TokenServiceClient::new(connect(&conn).await?);
            let mut received = 0;
            // The server takes at most 1,000 per report.
            for chunk in tokens.chunks(1000) {
                let request = proto::ReportLeakedTokensRequest {
                    tokens: chunk.to_vec(),
                    source: source.clone(),
                };
                received += client
                    .report_leaked_tokens(request)
                    .await?
                    .into_inner()
                    .received;
            }
            out!("reported {received} tokens; every valid one is now revoked");
            Ok(())
        }
        ClientCommand::Revoke { auth, id } => {
            let mut client = TokenServiceClient::new(connect(&auth.conn).await?);
            let request = authed(&auth, proto::RevokeTokenRequest { id })?;
            print_token(&client.revoke_token(request).await?.into_inner(), auth.json);
            Ok(())
        }
        ClientCommand::Delete { auth, id } => {
            let mut client = TokenServiceClient::new(connect(&auth.conn).await?);
            let request = authed(&auth, proto::DeleteTokenRequest { id: id.clone() })?;
            client.delete_token(request).await?;
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
            json,
        } => {
            let token = read_presented_token()?;
            let mut client = IntrospectionServiceClient::new(connect(&conn).await?);
            let request = proto::IntrospectRequest {
                token,
                required_scopes: require,
                client_ip: client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            };
            let answer = client.introspect(request).await?.into_inner();
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
            Ok(())
        }
        ClientCommand::Scopes { conn, json } => {
            let mut client = TokenServiceClient::new(connect(&conn).await?);
            let scopes = client
                .list_scopes(proto::ListScopesRequest {})
                .await?
                .into_inner()
                .scopes;
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
    let channel = connect(&args.conn).await?;
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
