//! Commands that talk to a running patd over gRPC, as any API user would, with a
//! token from `PATD_TOKEN` (the operator's `admin` commands, by contrast, open the
//! database directly). Human tables by default, `--json` for scripts, and exit
//! codes scripts can rely on (see [`ClientError`]).
//!
//! May use: `patd_client` (the client, and the `proto` it compiles), the
//! library's `domain`, and the binary's `output`.

mod commands;
mod print;

pub use commands::{health, run};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use patd_client::{Client, Tls};
use tonic::{Code, Status};

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
    /// What the token is for, e.g. "ci deploy" (1 to 100 characters)
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
    /// What the token is for, in a sentence (at most 500 characters)
    #[arg(long, default_value = "")]
    pub description: String,
    /// A label KEY=VALUE, e.g. team=payments (repeat for more, at most 16)
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Comma-separated resources the token is restricted to, e.g. product:PR-7,license:LK-1
    #[arg(long, value_delimiter = ',')]
    pub resources: Vec<String>,
}

/// `KEY=VALUE` of `--label` (the server checks both parts).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
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
    Suspended,
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
        /// Only tokens with these labels, e.g. team=payments,env (a key alone: has it)
        #[arg(long)]
        label_selector: Option<String>,
        /// Sort order
        #[arg(long, value_enum, default_value = "created-desc")]
        order: ListOrder,
    },
    /// Change one of your tokens' name, description or labels (what it grants stays)
    Update {
        #[command(flatten)]
        auth: AuthArgs,
        /// The token's id (22 letters and digits)
        id: String,
        /// A new name
        #[arg(long)]
        name: Option<String>,
        /// A new description ("" clears it)
        #[arg(long)]
        description: Option<String>,
        /// The new labels KEY=VALUE, replacing all of them (repeat for more)
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Remove every label
        #[arg(long, conflicts_with = "labels")]
        clear_labels: bool,
    },
    /// Show one of your tokens
    Get {
        #[command(flatten)]
        auth: AuthArgs,
        /// The token's id (22 letters and digits)
        id: String,
    },
    /// Give one of your tokens a new secret (printed once, on stdout); without an
    /// id, the token in PATD_TOKEN rotates itself
    Rotate {
        #[command(flatten)]
        auth: AuthArgs,
        /// The token's id; without one, the token in PATD_TOKEN rotates itself
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
        /// The token's id (22 letters and digits)
        id: String,
    },
    /// Suspend one of your tokens: inactive everywhere until resumed (idempotent)
    Suspend {
        #[command(flatten)]
        auth: AuthArgs,
        /// The token's id (22 letters and digits)
        id: String,
    },
    /// Resume a suspended token; needs every scope it grants (idempotent)
    Resume {
        #[command(flatten)]
        auth: AuthArgs,
        /// The token's id (22 letters and digits)
        id: String,
    },
    /// Offboarding: revoke every token of one owner (a trusted caller: anyone's;
    /// a user token: its own) and print how many were revoked
    RevokeAll {
        #[command(flatten)]
        auth: AuthArgs,
        /// The subject whose tokens are revoked
        #[arg(long)]
        subject: String,
        /// Its account
        #[arg(long)]
        account: String,
    },
    /// Delete one of your tokens
    Delete {
        #[command(flatten)]
        auth: AuthArgs,
        /// The token's id (22 letters and digits)
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
        /// The resource the token is used on, e.g. product:PR-7 (denied: exit 6)
        #[arg(long)]
        resource: Option<String>,
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

/// A client for `conn`, connected now, so that an unreachable server is said at
/// once (exit 75). The one client implementation: patd-client's.
async fn connect(conn: &ConnArgs, credential: Option<&str>) -> Result<Client, ClientError> {
    let mut builder = Client::builder(conn.addr.clone())
        .timeout(conn.timeout)
        .connect_timeout(conn.timeout);
    if let Some(ca_file) = &conn.ca_file {
        let identity = match (&conn.client_cert_file, &conn.client_key_file) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        builder = builder.tls(Tls {
            ca_pem: read(ca_file)?,
            identity,
            server_name: conn.tls_server_name.clone(),
        });
    }
    if let Some(credential) = credential {
        builder = builder.credential(credential);
    }
    Ok(builder.connect().await?)
}

/// A client presenting the caller's token (and acting for another owner if asked).
async fn authed(auth: &AuthArgs) -> Result<Client, ClientError> {
    let token = auth.token.as_deref().ok_or_else(|| {
        ClientError::new(
            exit::DENIED,
            "no credential: set PATD_TOKEN (or --token) to a token with personalAccessToken:write",
        )
    })?;
    let client = connect(&auth.conn, Some(token.trim())).await?;
    match (&auth.act_as_subject, &auth.act_as_account) {
        (Some(subject), Some(account)) => Ok(client.acting_for(subject, account)?),
        _ => Ok(client),
    }
}
