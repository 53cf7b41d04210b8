//! The end-to-end benchmark's service (see BENCHMARKS.md): one axum hello-world
//! with three routes, so that one run compares them on equal terms:
//!
//! - `/open`: no authentication;
//! - `/layer`: behind [`AuthLayer`] (`license:read`), tokens answered from the
//!   Authenticator's cache;
//! - `/introspect`: the handler calls patd's `Introspect` for every request,
//!   as a service without the crate would.
//!
//! Environment: `PATD_ADDR` (default `127.0.0.1:50051`), `LISTEN` (default
//! `127.0.0.1:3000`).

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use patd_client::{AuthLayer, Authenticator, AuthenticatorSettings, Client, Principal};

/// The same work as the other routes' handlers, without a caller to name.
async fn hello() -> String {
    format!("hello {}\n", "anonymous")
}

async fn hello_principal(principal: Principal) -> String {
    format!("hello {}\n", principal.subject)
}

/// Per request: `Introspect` the presented token.
async fn hello_introspected(client: Client, headers: HeaderMap) -> Result<String, StatusCode> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    let required = ["license:read".to_owned()];
    let answer = client
        .introspect(token, &required, None)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    if !answer.active {
        return Err(StatusCode::UNAUTHORIZED);
    }
    if !answer.missing_scopes.is_empty() {
        return Err(StatusCode::FORBIDDEN);
    }
    Ok(format!("hello {}\n", answer.subject))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let patd = std::env::var("PATD_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let client = Client::builder(patd).build()?;
    let auth = Authenticator::new(client.clone(), AuthenticatorSettings::default());
    let app = Router::new()
        .route("/open", get(hello))
        .route(
            "/layer",
            get(hello_principal).route_layer(AuthLayer::new(auth, ["license:read"])),
        )
        .route(
            "/introspect",
            get(move |headers: HeaderMap| hello_introspected(client.clone(), headers)),
        );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
