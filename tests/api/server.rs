//! Health, reflection and graceful shutdown, as probes and grpcurl see them.

use std::time::Duration;

use patd::proto::CreateTokenRequest;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1alpha;

use crate::backend_tests;
use crate::helpers::{TestApp, WriteLock, authed};

const SERVICES: [&str; 3] = ["", "pat.v1.TokenService", "pat.v1.IntrospectionService"];

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

async fn health_reports_serving_for_the_server_and_each_service(app: TestApp) {
    let mut health = HealthClient::new(app.channel().await);
    for service in SERVICES {
        let answer = health.check(check(service)).await.unwrap().into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health.check(check("pat.v1.Nope")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

async fn shutdown_reports_not_serving_then_stops_cleanly(app: TestApp) {
    let mut health = HealthClient::new(app.channel().await);
    let mut watch = health.watch(check("")).await.unwrap().into_inner();
    let first: HealthCheckResponse = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let addr = app.addr;
    let stopping = tokio::spawn(app.stop());
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("health watchers hear of the shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(watch);
    drop(health);
    let stopped = tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the server stops once calls have drained");
    assert!(stopped.unwrap().is_ok());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
}

async fn shutdown_lets_in_flight_calls_finish(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    // Hold storage's write lock so that a CreateToken is still in flight when
    // shutdown begins.
    let lock = WriteLock::take(&app).await;
    let mut client = app.tokens().await;
    let call = tokio::spawn(async move {
        let request = CreateTokenRequest {
            name: "in flight".to_owned(),
            scopes: vec!["tag:read".to_owned()],
            expires_at: None,
            allowed_cidrs: vec![],
            ..Default::default()
        };
        client.create_token(authed(&manager, request)).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!call.is_finished(), "the call waits on the lock");

    let addr = app.addr;
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the server waits for the in-flight call"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections are refused while draining, not left hanging"
    );
    lock.release().await;

    let created = call.await.unwrap().expect("the in-flight call completes");
    assert_eq!(created.into_inner().token.unwrap().name, "in flight");
    let stopped = tokio::time::timeout(Duration::from_secs(10), stopping).await;
    assert!(
        stopped
            .expect("the server stops after draining")
            .unwrap()
            .is_ok()
    );
}

async fn reflection_v1_lists_and_describes_every_service(app: TestApp) {
    let mut reflection = ServerReflectionClient::new(app.channel().await);
    let ask = |message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let requests = tokio_stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "pat.v1.TokenService".to_owned(),
        )),
        ask(MessageRequest::FileByFilename(
            "google/protobuf/timestamp.proto".to_owned(),
        )),
        ask(MessageRequest::FileContainingSymbol(
            "grpc.health.v1.Health".to_owned(),
        )),
    ]);
    let mut answers = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "pat.v1.IntrospectionService",
            "pat.v1.TokenService",
        ]
    );

    for expected_file in [
        "pat/v1/pat.proto",
        "google/protobuf/timestamp.proto",
        "health.proto",
    ] {
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            answers.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a file descriptor for {expected_file}");
        };
        let file =
            prost_types::FileDescriptorProto::decode(&files.file_descriptor_proto[0][..]).unwrap();
        assert!(
            file.name().ends_with(expected_file),
            "{} for {expected_file}",
            file.name()
        );
        if expected_file == "pat/v1/pat.proto" {
            let services: Vec<_> = file.service.iter().map(|s| s.name()).collect();
            assert_eq!(services, vec!["TokenService", "IntrospectionService"]);
            assert_eq!(
                file.dependency,
                vec![
                    "google/protobuf/duration.proto",
                    "google/protobuf/field_mask.proto",
                    "google/protobuf/timestamp.proto"
                ]
            );
        }
    }
}

async fn reflection_v1alpha_serves_older_grpcurl(app: TestApp) {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(app.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "pat.v1.IntrospectionService")
    );
}

backend_tests!(
    health_reports_serving_for_the_server_and_each_service,
    shutdown_reports_not_serving_then_stops_cleanly,
    shutdown_lets_in_flight_calls_finish,
    reflection_v1_lists_and_describes_every_service,
    reflection_v1alpha_serves_older_grpcurl,
);
