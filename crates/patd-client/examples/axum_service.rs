//! An axum service protected by patd: `GET /licenses` needs `license:read`,
//! `POST /licenses` needs `license:write`, `GET /` is public.
//!
//! ```sh
//! patd serve &                      # patd on 127.0.0.1:50051
//! cargo run -p patd-client --features axum --example axum_service
//! curl -H "authorization: Bearer $TOKEN" localhost:3000/licenses
//! ```
//!
//! Environment: `PATD_ADDR` (default `127.0.0.1:50051`), `LISTEN` (default
//! `127.0.0.1:3000`), and `PATD_CREDENTIAL` if patd limits who may introspect
//! (`introspection_callers`).

use axum::Router;
use axum::routing::get;
use patd_client::{AuthLayer, Authenticator, AuthenticatorSettings, Client, Principal};

async fn list_licenses(principal: Principal) -> String {
    format!(
        "licenses of {} for {}\n",
        principal.account, principal.subject
    )
}

async fn add_license(principal: Principal) -> String {
    format!(
        "license added by {} (token {})\n",
        principal.subject, principal.token_id
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let patd = std::env::var("PATD_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());

    // One Authenticator per process: its cache and its change stream are shared
    // by every route (clones are cheap).
    let mut client = Client::builder(patd);
    if let Ok(credential) = std::env::var("PATD_CREDENTIAL") {
        client = client.credential(credential);
    }
    let auth = Authenticator::new(client.build()?, AuthenticatorSettings::default());

    let app = Router::new()
        .route(
            "/licenses",
            get(list_licenses)
                .route_layer(AuthLayer::new(auth.clone(), ["license:read"]))
                .merge(
                    axum::routing::post(add_license)
                        .route_layer(AuthLayer::new(auth.clone(), ["license:write"])),
                ),
        )
        .route("/", get(|| async { "public\n" }));

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
