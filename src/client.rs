//! Commands that talk to a running patd over gRPC (the operator's `token` commands,
//! by contrast, open the database directly).

use std::time::Duration;

use clap::Args;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The server, as HOST:PORT
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Health service to ask about: "" for the whole server, `liveness`, or a
    /// service such as pat.v1.IntrospectionService
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this long, e.g. 5s
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Asks `grpc.health.v1.Health/Check` and prints the status; succeeds only on
/// SERVING, so scripts, `helm test` and container health checks can rely on it.
pub async fn health(args: HealthArgs) -> Result<(), String> {
    let target = format!("http://{}", args.addr);
    let endpoint = Endpoint::from_shared(target)
        .map_err(|err| format!("bad --addr {:?}: {err}", args.addr))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|err| format!("cannot connect to {}: {err}", args.addr))?;
    let request = HealthCheckRequest {
        service: args.service.clone(),
    };
    let status = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(|status| {
            format!(
                "health check of {:?} failed: {:?}: {}",
                args.service,
                status.code(),
                status.message()
            )
        })?
        .into_inner()
        .status();
    println!("{}", status.as_str_name());
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(format!("{:?} is {}", args.service, status.as_str_name()))
    }
}
