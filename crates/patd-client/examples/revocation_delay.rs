//! How long a revocation takes to reach an [`Authenticator`]'s cache: for each
//! of `TOKENS` tokens, create it on patd `REVOKE_ON`, cache it in an
//! Authenticator following patd `WATCH` (the same server, or another replica
//! on the same Postgres), revoke it through `REVOKE_ON`, and time until the
//! cached answer is gone (polled every 50 µs, without calls). Prints p50, p99
//! and max, from the revoke's acknowledgement and from its sending.
//!
//! `PATD_TOKEN`: a token with `personalAccessToken:write` and `license:read`.
//! See BENCHMARKS.md for the commands.

use std::time::{Duration, Instant};

use patd_client::{Authenticator, AuthenticatorSettings, Client, VerifyError, proto};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn show(what: &str, mut delays: Vec<Duration>) {
    delays.sort();
    println!(
        "{what}: p50 {:?}, p99 {:?}, max {:?} over {}",
        percentile(&delays, 0.50),
        percentile(&delays, 0.99),
        delays[delays.len() - 1],
        delays.len()
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let revoke_on = env("REVOKE_ON", "127.0.0.1:50051");
    let watch = env("WATCH", &revoke_on);
    let tokens: usize = env("TOKENS", "200").parse()?;
    if tokens == 0 {
        return Err("TOKENS must be at least 1".into());
    }
    let manager = std::env::var("PATD_TOKEN").map_err(|_| "set PATD_TOKEN")?;

    let writer = Client::builder(revoke_on.clone())
        .credential(manager)
        .build()?;
    let auth = Authenticator::new(
        Client::builder(watch.clone()).build()?,
        AuthenticatorSettings::default(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !auth.is_coherent() {
        if Instant::now() > deadline {
            return Err("the Authenticator's change stream never started".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("revoking on {revoke_on}, watching {watch}, {tokens} tokens");
    let (mut from_ack, mut from_send) = (Vec::new(), Vec::new());
    for i in 0..tokens {
        let created = writer
            .create_token(proto::CreateTokenRequest {
                name: format!("revocation delay {i}"),
                scopes: vec!["license:read".into()],
                ..Default::default()
            })
            .await?;
        let (secret, id) = (created.secret, created.token.ok_or("no token")?.id);
        auth.verify(&secret, &["license:read"], None).await?;
        if !matches!(auth.verify_cached(&secret, &[], None), Some(Ok(_))) {
            return Err(format!("token {i} was not cached").into());
        }
        let poller = {
            let (auth, secret) = (auth.clone(), secret.clone());
            tokio::task::spawn_blocking(move || {
                let give_up = Instant::now() + Duration::from_secs(10);
                loop {
                    match auth.verify_cached(&secret, &[], None) {
                        Some(Ok(_)) if Instant::now() < give_up => {
                            std::thread::sleep(Duration::from_micros(50))
                        }
                        Some(Err(VerifyError::Inactive)) | None => return Ok(Instant::now()),
                        _ => return Err("still cached after 10 s"),
                    }
                }
            })
        };
        let sent = Instant::now();
        writer.revoke_token(&id).await?;
        let acknowledged = Instant::now();
        let denied = poller.await??;
        from_ack.push(denied.saturating_duration_since(acknowledged));
        from_send.push(denied.duration_since(sent));
        // Denied for good: not only dropped from the cache, inactive at patd too.
        if !matches!(
            auth.verify(&secret, &[], None).await,
            Err(VerifyError::Inactive)
        ) {
            return Err(format!("token {i} is still accepted after its revocation").into());
        }
    }
    show("from the revoke's acknowledgement", from_ack);
    show("from sending the revoke", from_send);
    Ok(())
}
