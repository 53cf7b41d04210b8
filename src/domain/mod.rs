//! What a token is and the rules it obeys, apart from how it is stored or sent:
//! the token format, scopes, the token model, the subset rule, policies, CIDR
//! allowlists, resource restrictions, labels, text rules and time.
//!
//! Pure: no I/O, no async, no tonic, no sqlx. May use: nothing else of patd.

pub mod authority;
pub mod cidr;
pub mod clock;
pub mod error;
pub mod labels;
pub mod model;
pub mod policy;
pub mod resource;
pub mod scope;
pub mod text;
pub mod token;
