//! `Principal` as an axum extractor: a handler behind [`crate::AuthLayer`]
//! takes `principal: Principal`. Without the layer in front it is a 401, never
//! an unauthenticated call.

use axum_core::extract::FromRequestParts;
use http::StatusCode;
use http::request::Parts;

use crate::Principal;

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, StatusCode> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(StatusCode::UNAUTHORIZED)
    }
}
