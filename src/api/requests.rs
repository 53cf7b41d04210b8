//! Every request message checked and turned into typed arguments, before any
//! I/O: pure functions, shared by the handlers and run by the fuzzers
//! (`fuzz/`). A request that breaks a rule gets `INVALID_ARGUMENT` saying
//! which; no request is ever answered `INTERNAL` from here.

use std::net::IpAddr;
use std::time::Duration;

use tonic::Status;

use crate::domain::cidr::CidrList;
use crate::domain::clock;
use crate::domain::labels::{LabelSelector, Labels, validate_description};
use crate::domain::model::{MAX_NAME_CHARS, Owner, TokenState, parse_scopes};
use crate::domain::resource::{Resource, ResourceList};
use crate::domain::scope::ScopeSet;
use crate::domain::text::{sanitize, validate_filter, validate_text};
use crate::domain::token::is_valid_id;
use crate::proto;
use crate::store::{After, Cursor, SortKey, TokenFilter, TokenOrder, TokenUpdate};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Tokens per leak report, at most.
pub const MAX_LEAKED_TOKENS: usize = 1000;
/// Characters of a leak report's `source` kept.
pub const MAX_SOURCE_CHARS: usize = 200;

/// A CreateToken request, checked (the caller's authority and the account's
/// policy are checked by the handler, which knows them).
#[derive(Debug)]
pub struct NewToken {
    pub name: String,
    pub scopes: ScopeSet,
    pub expires_at: Option<i64>,
    pub allowed_cidrs: CidrList,
    pub description: String,
    pub labels: Labels,
    pub resources: ResourceList,
}

pub fn create(request: &proto::CreateTokenRequest) -> Result<NewToken, Status> {
    Ok(NewToken {
        name: validate_text("name", &request.name, MAX_NAME_CHARS)?,
        scopes: parse_scopes(&request.scopes)?,
        expires_at: requested_expiry(request.expires_at.as_ref())?,
        allowed_cidrs: CidrList::parse(&request.allowed_cidrs)?,
        description: validate_description(&request.description)?,
        labels: Labels::parse(&request.labels)?,
        resources: ResourceList::parse("resources", &request.resources)?,
    })
}

/// Paths in one update mask, at most (there are three fields to name).
const MAX_MASK_PATHS: usize = 16;

/// An UpdateToken request (Google AIP-134): the token's id and the fields to set.
pub fn update(request: &proto::UpdateTokenRequest) -> Result<(String, TokenUpdate), Status> {
    let id = requested_id(&request.id)?.to_owned();
    let empty = proto::Token::default();
    let token = request.token.as_ref().unwrap_or(&empty);
    if !token.id.is_empty() && token.id != id {
        return Err(Status::invalid_argument(
            "token.id must be empty or equal id: a token's id cannot be changed",
        ));
    }
    let paths: Vec<&str> = match &request.update_mask {
        Some(mask) if !mask.paths.is_empty() => {
            if mask.paths.len() > MAX_MASK_PATHS {
                return Err(Status::invalid_argument(format!(
                    "update_mask: at most {MAX_MASK_PATHS} paths"
                )));
            }
            mask.paths.iter().map(String::as_str).collect()
        }
        // No mask: the updatable fields that are set.
        _ => [
            ("name", !token.name.is_empty()),
            ("description", !token.description.is_empty()),
            ("labels", !token.labels.is_empty()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(path, _)| path)
        .collect(),
    };
    if paths.is_empty() {
        return Err(Status::invalid_argument(
            "nothing to update: name update_mask paths (name, description, labels) or set those fields of token",
        ));
    }
    let mut update = TokenUpdate::default();
    for path in paths {
        let path = path.trim();
        let all = path == "*";
        let mut known = all;
        if all || path == "name" {
            update.name = Some(validate_text("name", &token.name, MAX_NAME_CHARS)?);
            known = true;
        }
        if all || path == "description" {
            update.description = Some(validate_description(&token.description)?);
            known = true;
        }
        if all || path == "labels" {
            update.labels = Some(Labels::parse(&token.labels)?);
            known = true;
        }
        if !known {
            let shown: String = path.chars().take(60).collect();
            return Err(Status::invalid_argument(format!(
                "update_mask: {shown:?} cannot be updated: only name, description and labels can \
                 (what a token grants is fixed at creation: create a new token instead)"
            )));
        }
    }
    Ok((id, update))
}

/// A ListTokens query: filters, order, page size; the page token is decoded
/// with [`decode_page`] once the owner is known.
#[derive(Debug)]
pub struct Search {
    pub filter: TokenFilter,
    pub order: TokenOrder,
    pub page_size: u32,
}

pub fn list(request: &proto::ListTokensRequest) -> Result<Search, Status> {
    let filter = TokenFilter {
        state: match requested_enum::<proto::TokenState>("state", request.state)? {
            proto::TokenState::Unspecified => None,
            proto::TokenState::Active => Some(TokenState::Active),
            proto::TokenState::Expired => Some(TokenState::Expired),
            proto::TokenState::Revoked => Some(TokenState::Revoked),
            proto::TokenState::Suspended => Some(TokenState::Suspended),
        },
        created_after: requested_time("created_after", request.created_after.as_ref())?,
        created_before: requested_time("created_before", request.created_before.as_ref())?,
        expires_after: requested_time("expires_after", request.expires_after.as_ref())?,
        expires_before: requested_time("expires_before", request.expires_before.as_ref())?,
        last_used_after: requested_time("last_used_after", request.last_used_after.as_ref())?,
        last_used_before: requested_time("last_used_before", request.last_used_before.as_ref())?,
        name_contains: validate_filter("name_contains", &request.name_contains, MAX_NAME_CHARS)?,
        label_selector: LabelSelector::parse(&request.label_selector)?,
    };
    let order = match requested_enum::<proto::TokenOrder>("order_by", request.order_by)? {
        proto::TokenOrder::Unspecified | proto::TokenOrder::CreatedDesc => TokenOrder::CreatedDesc,
        proto::TokenOrder::CreatedAsc => TokenOrder::CreatedAsc,
        proto::TokenOrder::ExpiresAsc => TokenOrder::ExpiresAsc,
        proto::TokenOrder::LastUsedDesc => TokenOrder::LastUsedDesc,
        proto::TokenOrder::NameAsc => TokenOrder::NameAsc,
    };
    Ok(Search {
        filter,
        order,
        page_size: page_size(request.page_size)?,
    })
}

pub fn list_expiring(request: &proto::ListExpiringTokensRequest) -> Result<Search, Status> {
    let expires_before = requested_time("expires_before", request.expires_before.as_ref())?
        .ok_or_else(|| Status::invalid_argument("expires_before is required"))?;
    Ok(Search {
        filter: TokenFilter {
            state: Some(TokenState::Active),
            expires_before: Some(expires_before),
            ..TokenFilter::default()
        },
        order: TokenOrder::ExpiresAsc,
        page_size: page_size(request.page_size)?,
    })
}

/// Where a search continues: the page token must come from the same query
/// (owner, filters, order).
pub fn decode_page(
    page_token: &str,
    owner: Option<&Owner>,
    search: &Search,
) -> Result<Option<After>, Status> {
    if page_token.is_empty() {
        return Ok(None);
    }
    let fingerprint = query_fingerprint(owner, &search.filter, search.order);
    decode_after(page_token, &fingerprint, search.order)
        .map(Some)
        .ok_or_else(|| {
            Status::invalid_argument(
                "page_token is malformed or belongs to other filters or order: pass next_page_token \
                 from the previous response, with the same request",
            )
        })
}

/// A rotation: of a token by id (`RotateToken`) or of the caller (`RotateSelf`).
#[derive(Debug)]
pub struct Rotation {
    pub expires_at: Option<i64>,
    pub grace: Duration,
}

pub fn rotate(request: &proto::RotateTokenRequest) -> Result<(String, Rotation), Status> {
    let id = requested_id(&request.id)?.to_owned();
    Ok((
        id,
        Rotation {
            expires_at: requested_expiry(request.expires_at.as_ref())?,
            grace: requested_grace(request.grace_period.as_ref())?,
        },
    ))
}

pub fn rotate_self(request: &proto::RotateSelfRequest) -> Result<Rotation, Status> {
    Ok(Rotation {
        expires_at: requested_expiry(request.expires_at.as_ref())?,
        grace: requested_grace(request.grace_period.as_ref())?,
    })
}

/// A leak report: the tokens as sent (each is parsed, and junk is simply not a
/// token) and the source, defused.
pub fn leak_report(request: &proto::ReportLeakedTokensRequest) -> Result<String, Status> {
    if request.tokens.len() > MAX_LEAKED_TOKENS {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_LEAKED_TOKENS} tokens per report (got {}); split it",
            request.tokens.len()
        )));
    }
    // Kept whatever it holds (it must never stop a revocation), but defused.
    Ok(sanitize(&request.source, MAX_SOURCE_CHARS))
}

pub fn list_events(
    request: &proto::ListTokenEventsRequest,
) -> Result<(u32, Option<Cursor>), Status> {
    Ok((
        page_size(request.page_size)?,
        page_cursor(&request.page_token)?,
    ))
}

/// Where a WatchChanges subscription starts: after a cursor, or (`None`) now.
pub fn watch(request: &proto::WatchChangesRequest) -> Result<Option<i64>, Status> {
    match request.after.as_str() {
        "" => Ok(None),
        cursor => decode_change_cursor(cursor).map(Some).ok_or_else(|| {
            Status::invalid_argument(
                "after is not a cursor: pass a TokenChange's cursor unchanged, or nothing to start from now",
            )
        }),
    }
}

const CHANGE_CURSOR_TAG: &str = "c1.";

/// A change-stream cursor: `c1.` and the hex seq of the last change delivered.
pub fn encode_change_cursor(seq: i64) -> String {
    format!("{CHANGE_CURSOR_TAG}{seq:x}")
}

pub fn decode_change_cursor(text: &str) -> Option<i64> {
    let hex = text.strip_prefix(CHANGE_CURSOR_TAG)?;
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    i64::from_str_radix(hex, 16).ok().filter(|seq| *seq >= 0)
}

/// An Introspect request, checked.
#[derive(Debug)]
pub struct Introspection {
    /// The scopes to report missing.
    pub required: ScopeSet,
    /// The client's address.
    pub client: Option<IpAddr>,
    /// The resource the client acts on.
    pub resource: Option<Resource>,
}

pub fn introspect(request: &proto::IntrospectRequest) -> Result<Introspection, Status> {
    // A misspelt required scope is the calling service's bug: say so loudly
    // rather than deny every token in silence.
    let required = ScopeSet::parse(&request.required_scopes)
        .map_err(|unknown| Status::invalid_argument(format!("required_scopes: {unknown}")))?;
    let client = match request.client_ip.trim() {
        "" => None,
        text => Some(
            text.parse::<IpAddr>()
                .map_err(|_| Status::invalid_argument("client_ip is not an IPv4 or IPv6 address"))?
                .to_canonical(),
        ),
    };
    let resource = match request.resource.trim() {
        "" => None,
        name => Some(Resource::parse("resource", name)?),
    };
    Ok(Introspection {
        required,
        client,
        resource,
    })
}

/// An enum field of a request: a value this server does not know (a newer
/// client's, or a negative number) is refused, never read as the default.
fn requested_enum<E>(field: &str, value: i32) -> Result<E, Status>
where
    E: TryFrom<i32> + EnumNames,
{
    E::try_from(value).map_err(|_| {
        Status::invalid_argument(format!(
            "{field} {value} is not one of {}",
            E::names().join(", ")
        ))
    })
}

/// The names of a request enum's values, for messages.
trait EnumNames {
    fn names() -> Vec<&'static str>;
}

impl EnumNames for proto::TokenState {
    fn names() -> Vec<&'static str> {
        (0..)
            .map_while(|n| proto::TokenState::try_from(n).ok())
            .map(|state| state.as_str_name())
            .collect()
    }
}

impl EnumNames for proto::TokenOrder {
    fn names() -> Vec<&'static str> {
        (0..)
            .map_while(|n| proto::TokenOrder::try_from(n).ok())
            .map(|order| order.as_str_name())
            .collect()
    }
}

/// A token id from a request: malformed ids are refused before any lookup.
pub fn requested_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("id is required"));
    }
    if !is_valid_id(id) {
        return Err(Status::invalid_argument(
            "id is malformed: token ids are 22 letters and digits",
        ));
    }
    Ok(id)
}

/// An expiry from a request, if set.
pub fn requested_expiry(timestamp: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Status> {
    requested_time("expires_at", timestamp)
}

/// The longest a rotated-away secret may keep working.
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

pub fn requested_grace(grace: Option<&prost_types::Duration>) -> Result<Duration, Status> {
    let Some(grace) = grace else {
        return Ok(Duration::ZERO);
    };
    let invalid = || {
        Status::invalid_argument(format!(
            "grace_period must be between 0 and {}",
            humantime::format_duration(MAX_GRACE)
        ))
    };
    let grace = Duration::try_from(*grace).map_err(|_| invalid())?;
    if grace > MAX_GRACE {
        return Err(invalid());
    }
    Ok(grace)
}

/// A time from a request's `field`, if set.
pub fn requested_time(
    field: &str,
    timestamp: Option<&prost_types::Timestamp>,
) -> Result<Option<i64>, Status> {
    timestamp
        .map(|timestamp| {
            clock::from_timestamp(timestamp).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{field} must be between 1970-01-01 and 9999-12-31 with nanos in 0..1e9"
                ))
            })
        })
        .transpose()
}

const SEARCH_TOKEN_TAG: &str = "p2.";

/// Identifies a query (owner, filters, order), so that a page token is only ever
/// used to continue the query that issued it.
pub fn query_fingerprint(
    owner: Option<&Owner>,
    filter: &TokenFilter,
    order: TokenOrder,
) -> [u8; 8] {
    let text = format!("{owner:?}|{filter:?}|{order:?}");
    let hash = blake3::hash(text.as_bytes());
    hash.as_bytes()[..8].try_into().expect("8 bytes")
}

/// `p2.` then hex of: the query fingerprint, the last row's seq, and its sort
/// key (`i` and 8 bytes, or `t` and the text).
pub fn encode_after(after: &After, fingerprint: &[u8; 8]) -> String {
    let mut bytes = fingerprint.to_vec();
    bytes.extend_from_slice(&after.seq.to_be_bytes());
    match &after.key {
        SortKey::Int(value) => {
            bytes.push(b'i');
            bytes.extend_from_slice(&value.to_be_bytes());
        }
        SortKey::Text(value) => {
            bytes.push(b't');
            bytes.extend_from_slice(value.as_bytes());
        }
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{SEARCH_TOKEN_TAG}{hex}")
}

pub fn decode_after(text: &str, fingerprint: &[u8; 8], order: TokenOrder) -> Option<After> {
    let hex = text.strip_prefix(SEARCH_TOKEN_TAG)?;
    if hex.len() % 2 != 0 || hex.len() > 2 * 1024 {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    if bytes.len() < 17 || bytes[..8] != fingerprint[..] {
        return None;
    }
    let seq = i64::from_be_bytes(bytes[8..16].try_into().ok()?);
    let key = match (bytes[16], &bytes[17..]) {
        (b'i', value) if value.len() == 8 => {
            SortKey::Int(i64::from_be_bytes(value.try_into().ok()?))
        }
        (b't', value) => SortKey::Text(String::from_utf8(value.to_vec()).ok()?),
        _ => return None,
    };
    // The fingerprint is no seal: a hand-made token must still fit the order.
    let text_key = order == TokenOrder::NameAsc;
    if text_key != matches!(key, SortKey::Text(_)) {
        return None;
    }
    Some(After { key, seq })
}

pub fn page_cursor(page_token: &str) -> Result<Option<Cursor>, Status> {
    match page_token {
        "" => Ok(None),
        token => Cursor::decode(token).map(Some).ok_or_else(|| {
            Status::invalid_argument(
                "page_token is malformed: pass next_page_token from the previous response unchanged",
            )
        }),
    }
}

pub fn page_size(requested: i32) -> Result<u32, Status> {
    match requested {
        ..0 => Err(Status::invalid_argument(format!(
            "page_size must not be negative (got {requested})"
        ))),
        0 => Ok(DEFAULT_PAGE_SIZE),
        // Larger pages are coerced to the maximum (Google AIP-158).
        size => Ok((size as u32).min(MAX_PAGE_SIZE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_cursors_round_trip_and_refuse_garbage() {
        for seq in [0, 1, 255, i64::MAX] {
            assert_eq!(decode_change_cursor(&encode_change_cursor(seq)), Some(seq));
        }
        for bad in [
            "",
            "c1.",
            "c1.-1",
            "c1.zz",
            "p1.10",
            "c1.10000000000000000",
            "c1.ffffffffffffffff",
        ] {
            assert_eq!(decode_change_cursor(bad), None, "{bad:?}");
        }
        let request = |after: &str| proto::WatchChangesRequest {
            after: after.to_owned(),
        };
        assert_eq!(watch(&request("")).unwrap(), None);
        assert_eq!(watch(&request("c1.a")).unwrap(), Some(10));
        assert_eq!(
            watch(&request("junk")).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn page_size_defaults_and_clamps() {
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(i32::MAX).unwrap(), MAX_PAGE_SIZE);
        assert_eq!(
            page_size(-1).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
