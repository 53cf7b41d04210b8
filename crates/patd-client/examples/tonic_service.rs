//! A tonic service protected by patd: every call needs a token granting
//! `license:read`; handlers find the caller's `Principal` in the request's
//! extensions. The service here is gRPC health, standing in for your own, whose
//! handlers read the caller like this:
//!
//! ```ignore
//! async fn get_license(&self, request: Request<GetLicenseRequest>) -> Result<…, Status> {
//!     let principal = request.extensions().get::<patd_client::Principal>().unwrap();
//!     // principal.subject, principal.account, principal.scopes, …
//! }
//! ```
//!
//! ```sh
//! patd serve &                      # patd on 127.0.0.1:50051
//! cargo run -p patd-client --example tonic_service
//! grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
//!   -d '{}' localhost:50061 grpc.health.v1.Health/Check
//! ```
//!
//! Environment: `PATD_ADDR` (default `127.0.0.1:50051`), `LISTEN` (default
//! `127.0.0.1:50061`), and `PATD_CREDENTIAL` if patd limits who may introspect.

use patd_client::{AuthLayer, Authenticator, AuthenticatorSettings, Client};
use tonic::transport::Server;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let patd = std::env::var("PATD_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:50061".into());

    let mut client = Client::builder(patd);
    if let Ok(credential) = std::env::var("PATD_CREDENTIAL") {
        client = client.credential(credential);
    }
    let auth = Authenticator::new(client.build()?, AuthenticatorSettings::default());

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let addr = listen.parse()?;
    println!("listening on {addr} (gRPC)");
    Server::builder()
        // Missing or inactive token: UNAUTHENTICATED; lacking the scope:
        // PERMISSION_DENIED; patd unreachable: UNAVAILABLE (fail closed).
        .layer(AuthLayer::new(auth, ["license:read"]))
        .add_service(health)
        .serve(addr)
        .await?;
    Ok(())
}
