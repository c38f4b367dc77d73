//! The pooled client to upstreams: HTTP/1.1 over TCP, or over rustls for
//! `https://` upstreams (checked against `[proxy] upstream_ca_file`, with
//! Gatehouse's own certificate when `[proxy] client_cert_file` is set:
//! mutual TLS, so an app can tell Gatehouse from anyone else sending
//! `X-Auth-User`).

use std::sync::Arc;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::config::ProxyConfig;

type Connector = Bounded<hyper_rustls::HttpsConnector<HttpConnector>>;

/// A connector whose whole connection, the TCP connect and the TLS
/// handshake together, must be made within `connect_timeout`: an upstream
/// that accepts and then stalls the handshake gets 502 like one that
/// cannot be reached.
#[derive(Clone)]
pub struct Bounded<C> {
    inner: C,
    within: std::time::Duration,
}

/// The error of a connection not made in time.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the upstream took longer than connect_timeout")]
pub struct ConnectTimedOut;

impl<C> tower::Service<http::Uri> for Bounded<C>
where
    C: tower::Service<http::Uri> + Send,
    C::Future: Send + 'static,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = C::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let within = self.within;
        Box::pin(async move {
            match tokio::time::timeout(within, connecting).await {
                Ok(made) => made.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut) as Self::Error),
            }
        })
    }
}

pub struct Client {
    inner: hyper_util::client::legacy::Client<Connector, axum::body::Body>,
}

impl Client {
    pub fn new(config: &ProxyConfig) -> Result<Client, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let mut roots = rustls::RootCertStore::empty();
        for ca in &config.upstream_ca {
            roots.add(ca.clone()).map_err(|e| format!("proxy.upstream_ca_file: {e}"))?;
        }
        // ring, as every TLS configuration of Gatehouse (`gatehouse_tls::provider`).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let tls = match &config.client_identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| format!("proxy.client_cert_file: {e}"))?,
            None => builder.with_no_client_auth(),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let https = Bounded { inner: https, within: config.connect_timeout };
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(https);
        Ok(Client { inner })
    }

    pub async fn request(
        &self,
        req: axum::http::Request<axum::body::Body>,
    ) -> Result<axum::http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        self.inner.request(req).await
    }
}
