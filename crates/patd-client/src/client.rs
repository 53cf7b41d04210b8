//! A typed client for every `pat.v1` RPC.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status, Streaming};

use crate::proto;
use crate::proto::introspection_service_client::IntrospectionServiceClient;
use crate::proto::token_service_client::TokenServiceClient;

/// TLS to patd: the CA bundle its certificate is checked against, and a client
/// certificate for mTLS if patd asks for one.
#[derive(Clone, Default)]
pub struct Tls {
    /// PEM CA bundle.
    pub ca_pem: Vec<u8>,
    /// PEM certificate chain and key, for mTLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name patd's certificate must carry (default: the endpoint's host).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// How to reach patd.
#[derive(Clone)]
pub struct ClientBuilder {
    address: String,
    tls: Option<Tls>,
    credential: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    retries: u32,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("address", &self.address)
            .field("tls", &self.tls)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

impl ClientBuilder {
    /// TLS instead of plaintext.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The credential sent as `authorization: Bearer …`: a token, or a trusted
    /// caller's service credential.
    pub fn credential(mut self, credential: impl Into<String>) -> Self {
        self.credential = Some(credential.into());
        self
    }

    /// How long one call may take (default 5 s; not for streams).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Further attempts of an idempotent call that met `UNAVAILABLE` (default
    /// 2), 100 ms apart and doubling.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The client. It connects on first use (and again after losing the
    /// connection), so a service may start before patd does.
    pub fn build(self) -> Result<Client, Status> {
        let (endpoint, client) = self.parts()?;
        Ok(client(endpoint.connect_lazy()))
    }

    /// The client, connected now: for a command line that should say at once
    /// that patd cannot be reached (`UNAVAILABLE`, naming the address) rather
    /// than on its first call. It reconnects by itself later, as [`build`]'s does.
    ///
    /// [`build`]: ClientBuilder::build
    pub async fn connect(self) -> Result<Client, Status> {
        let address = self.address.clone();
        let (endpoint, client) = self.parts()?;
        let channel = endpoint.connect().await.map_err(|err| {
            let mut message = format!("cannot connect to {address}: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            Status::unavailable(message)
        })?;
        Ok(client(channel))
    }

    /// The endpoint, and how to make the client once there is a channel.
    fn parts(self) -> Result<(Endpoint, impl FnOnce(Channel) -> Client), Status> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = if self.address.contains("://") {
            self.address.clone()
        } else {
            format!("{scheme}://{}", self.address)
        };
        let mut endpoint = Endpoint::from_shared(url)
            .map_err(|err| Status::invalid_argument(format!("patd address: {err}")))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            let mut config =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = &tls.server_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|err| Status::invalid_argument(format!("patd TLS settings: {err}")))?;
        }
        let authorization = self
            .credential
            .map(|credential| {
                MetadataValue::try_from(format!("Bearer {credential}"))
                    .map(|mut value| {
                        // Never indexed by HPACK, never printed by Debug.
                        value.set_sensitive(true);
                        value
                    })
                    .map_err(|_| Status::invalid_argument("the credential is not printable ASCII"))
            })
            .transpose()?;
        let (timeout, retries) = (self.timeout, self.retries);
        let client = move |channel| Client {
            channel,
            authorization: authorization.map(Arc::new),
            act_as: None,
            timeout,
            retries,
        };
        Ok((endpoint, client))
    }
}

/// A typed client for patd; cheap to clone (one connection, shared).
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    authorization: Option<Arc<MetadataValue<tonic::metadata::Ascii>>>,
    act_as: Option<(
        MetadataValue<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
    timeout: Duration,
    retries: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "credential",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("acting_for", &self.act_as)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// What every management call of [`Client`] returns.
pub type ClientResult<T> = Result<T, Status>;

impl Client {
    /// A client for patd at `address` (`host:port`, or a URL).
    pub fn builder(address: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            address: address.into(),
            tls: None,
            credential: None,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            retries: 2,
        }
    }

    /// The same client, for a trusted caller acting for `subject` in `account`.
    pub fn acting_for(&self, subject: &str, account: &str) -> ClientResult<Client> {
        let value = |text: &str| {
            MetadataValue::try_from(text).map_err(|_| {
                Status::invalid_argument("subject and account must be printable ASCII")
            })
        };
        Ok(Client {
            act_as: Some((value(subject)?, value(account)?)),
            ..self.clone()
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = self.untimed_request(message);
        request.set_timeout(self.timeout);
        request
    }

    /// A request without a deadline (for streams).
    fn untimed_request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        if let Some(authorization) = &self.authorization {
            metadata.insert("authorization", (**authorization).clone());
        }
        if let Some((subject, account)) = &self.act_as {
            metadata.insert("x-patd-act-as-subject", subject.clone());
            metadata.insert("x-patd-act-as-account", account.clone());
        }
        request
    }

    /// Runs an idempotent call, again after `UNAVAILABLE` (with backoff).
    async fn idempotent<T, F, Fut>(&self, mut call: F) -> ClientResult<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = ClientResult<T>>,
    {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            match call(self.clone()).await {
                Err(status) if status.code() == Code::Unavailable && attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                result => return result,
            }
        }
    }

    fn tokens(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel.clone())
    }

    fn introspection(&self) -> IntrospectionServiceClient<Channel> {
        IntrospectionServiceClient::new(self.channel.clone())
    }

    /// `Introspect`: whether `token` is active, and what it grants (retried).
    pub async fn introspect(
        &self,
        token: &str,
        required_scopes: &[String],
        client_ip: Option<std::net::IpAddr>,
    ) -> ClientResult<proto::IntrospectResponse> {
        self.introspect_request(proto::IntrospectRequest {
            token: token.to_owned(),
            required_scopes: required_scopes.to_vec(),
            client_ip: client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            ..Default::default()
        })
        .await
    }

    /// `Introspect` with every field of the request, e.g. the `resource` the
    /// client acts on (retried).
    pub async fn introspect_request(
        &self,
        message: proto::IntrospectRequest,
    ) -> ClientResult<proto::IntrospectResponse> {
        self.idempotent(|client| {
            let message = message.clone();
            async move {
                let request = client.request(message);
                Ok(client
                    .introspection()
                    .introspect(request)
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// `WatchChanges` after `cursor` (empty: from now). The stream has no
    /// timeout.
    pub async fn watch_changes(&self, after: &str) -> ClientResult<Streaming<proto::TokenChange>> {
        // A stream lives as long as it is read: no deadline.
        let request = self.untimed_request(proto::WatchChangesRequest {
            after: after.to_owned(),
        });
        Ok(self
            .introspection()
            .watch_changes(request)
            .await?
            .into_inner())
    }

    pub async fn create_token(
        &self,
        request: proto::CreateTokenRequest,
    ) -> ClientResult<proto::CreateTokenResponse> {
        Ok(self
            .tokens()
            .create_token(self.request(request))
            .await?
            .into_inner())
    }

    pub async fn get_token(&self, id: &str) -> ClientResult<proto::Token> {
        let id = id.to_owned();
        self.idempotent(|client| {
            let message = proto::GetTokenRequest { id: id.clone() };
            async move {
                Ok(client
                    .tokens()
                    .get_token(client.request(message))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    pub async fn list_tokens(
        &self,
        request: proto::ListTokensRequest,
    ) -> ClientResult<proto::ListTokensResponse> {
        self.idempotent(|client| {
            let message = request.clone();
            async move {
                Ok(client
                    .tokens()
                    .list_tokens(client.request(message))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Changes a token's name, description or labels (the fields named in
    /// `paths`, from `token`). Not retried: it is not idempotent with other
    /// updates in between.
    pub async fn update_token(
        &self,
        id: &str,
        token: proto::Token,
        paths: &[&str],
    ) -> ClientResult<proto::Token> {
        let message = proto::UpdateTokenRequest {
            id: id.to_owned(),
            token: Some(token),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|path| (*path).to_owned()).collect(),
            }),
        };
        Ok(self
            .tokens()
            .update_token(self.request(message))
            .await?
            .into_inner())
    }

    /// Revoking is idempotent, so it is retried too.
    pub async fn revoke_token(&self, id: &str) -> ClientResult<proto::Token> {
        let id = id.to_owned();
        self.idempotent(|client| {
            let message = proto::RevokeTokenRequest { id: id.clone() };
            async move {
                Ok(client
                    .tokens()
                    .revoke_token(client.request(message))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Suspends one of the caller's tokens (idempotent): inactive until resumed.
    pub async fn suspend_token(&self, id: &str) -> ClientResult<proto::Token> {
        let id = id.to_owned();
        self.idempotent(|client| {
            let message = proto::SuspendTokenRequest { id: id.clone() };
            async move {
                Ok(client
                    .tokens()
                    .suspend_token(client.request(message))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Resumes a suspended token (idempotent).
    pub async fn resume_token(&self, id: &str) -> ClientResult<proto::Token> {
        let id = id.to_owned();
        self.idempotent(|client| {
            let message = proto::ResumeTokenRequest { id: id.clone() };
            async move {
                Ok(client
                    .tokens()
                    .resume_token(client.request(message))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// Offboarding: revokes every token of one owner; how many this call revoked.
    pub async fn revoke_all_tokens(&self, subject: &str, account: &str) -> ClientResult<i32> {
        let message = proto::RevokeAllTokensRequest {
            subject: subject.to_owned(),
            account: account.to_owned(),
        };
        self.idempotent(|client| {
            let message = message.clone();
            async move {
                Ok(client
                    .tokens()
                    .revoke_all_tokens(client.request(message))
                    .await?
                    .into_inner()
                    .revoked_count)
            }
        })
        .await
    }

    pub async fn delete_token(&self, id: &str) -> ClientResult<()> {
        let message = proto::DeleteTokenRequest { id: id.to_owned() };
        self.tokens().delete_token(self.request(message)).await?;
        Ok(())
    }

    pub async fn rotate_token(
        &self,
        request: proto::RotateTokenRequest,
    ) -> ClientResult<proto::CreateTokenResponse> {
        Ok(self
            .tokens()
            .rotate_token(self.request(request))
            .await?
            .into_inner())
    }

    pub async fn rotate_self(
        &self,
        request: proto::RotateSelfRequest,
    ) -> ClientResult<proto::CreateTokenResponse> {
        Ok(self
            .tokens()
            .rotate_self(self.request(request))
            .await?
            .into_inner())
    }

    pub async fn get_self(&self) -> ClientResult<proto::Token> {
        self.idempotent(|client| async move {
            Ok(client
                .tokens()
                .get_self(client.request(proto::GetSelfRequest {}))
                .await?
                .into_inner())
        })
        .await
    }

    pub async fn list_token_events(
        &self,
        request: proto::ListTokenEventsRequest,
    ) -> ClientResult<proto::ListTokenEventsResponse> {
        self.idempotent(|client| {
            let message = request.clone();
            async move {
                Ok(client
                    .tokens()
                    .list_token_events(client.request(message))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    pub async fn list_scopes(&self) -> ClientResult<Vec<proto::Scope>> {
        self.idempotent(|client| async move {
            Ok(client
                .tokens()
                .list_scopes(client.request(proto::ListScopesRequest {}))
                .await?
                .into_inner()
                .scopes)
        })
        .await
    }

    pub async fn report_leaked_tokens(
        &self,
        request: proto::ReportLeakedTokensRequest,
    ) -> ClientResult<proto::ReportLeakedTokensResponse> {
        Ok(self
            .tokens()
            .report_leaked_tokens(self.request(request))
            .await?
            .into_inner())
    }

    pub async fn list_expiring_tokens(
        &self,
        request: proto::ListExpiringTokensRequest,
    ) -> ClientResult<proto::ListTokensResponse> {
        self.idempotent(|client| {
            let message = request.clone();
            async move {
                Ok(client
                    .tokens()
                    .list_expiring_tokens(client.request(message))
                    .await?
                    .into_inner())
            }
        })
        .await
    }

    /// The connection, for other services on the same patd (e.g. health).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_output_never_shows_the_credential_or_the_key() {
        let tls = Tls {
            ca_pem: b"-----BEGIN CERTIFICATE-----".to_vec(),
            identity: Some((b"CERT-PEM".to_vec(), b"PRIVATE-KEY-PEM".to_vec())),
            server_name: None,
        };
        let builder = Client::builder("127.0.0.1:9")
            .credential("patdsvc_TOPSECRET")
            .tls(tls);
        let client = Client::builder("127.0.0.1:9")
            .credential("patd_TOPSECRET")
            .build()
            .unwrap();
        for shown in [format!("{builder:?}"), format!("{client:?}")] {
            assert!(!shown.contains("TOPSECRET"), "{shown}");
            assert!(!shown.contains("PRIVATE-KEY"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        let authorization = client.request(()).metadata().get("authorization").cloned();
        assert!(authorization.is_some_and(|value| value.is_sensitive()));
    }
}
