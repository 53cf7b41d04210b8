//! The one integration-test binary: each module runs its scenarios against the
//! real gRPC server on SQLite and on Postgres (see `helpers::backend_tests!`).

mod helpers;

mod addresses;
mod architecture;
mod audit;
mod cache;
mod chart;
mod cli;
mod client;
mod escalation;
mod ext_authz;
mod faults;
mod fleet;
mod forward_auth;
mod hostile;
mod http_port;
mod inputs;
mod introspection;
mod labels;
mod lifecycle;
mod logs;
mod metrics;
mod migration;
mod oauth;
mod policy;
mod proxies;
mod readme;
mod receiver;
mod resources;
mod server;
mod storm;
mod suspension;
mod tls;
mod tokens;
mod watch;
mod webhooks;
