//! The control API's client: the address and tenant flags every command
//! shares, the token from `GUST_TOKEN`, and error answers turned into
//! messages for a person. Knows no command.

use std::time::Duration;

use anyhow::{Context as _, bail};
use gust_api::ErrorBody;
use serde::de::DeserializeOwned;

#[derive(clap::Args, Clone)]
pub struct ApiArgs {
    /// Control API address.
    #[arg(
        long,
        env = "GUST_API",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    api: String,
    /// Act on this tenant (admins: any; others: their token's own).
    #[arg(long, env = "GUST_TENANT", global = true)]
    tenant: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

pub(crate) struct Api {
    base: String,
    pub(crate) http: reqwest::Client,
    token: Option<String>,
    tenant: Option<String>,
}

impl Api {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        // A server with a certificate of its own (self-signed, a private CA).
        if let Some(path) = std::env::var_os("GUST_CA_CERT").filter(|p| !p.is_empty()) {
            let pem = std::fs::read(&path)
                .with_context(|| format!("cannot read GUST_CA_CERT {}", path.display()))?;
            let certificate = reqwest::Certificate::from_pem(&pem).with_context(|| {
                format!("GUST_CA_CERT {} is not a PEM certificate", path.display())
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder.build()?;
        Ok(Self {
            base: args.api.trim_end_matches('/').to_string(),
            http,
            token: std::env::var("GUST_TOKEN").ok().filter(|t| !t.is_empty()),
            tenant: args.tenant.clone(),
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        let builder = match &self.tenant {
            Some(tenant) => builder.header("gust-tenant", tenant),
            None => builder,
        };
        self.authorize(builder)
    }

    /// Adds the token, if there is one (also for calls to private functions).
    pub fn authorize(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends a request; an error answer becomes an error naming its message.
    pub async fn send_raw(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> anyhow::Result<(reqwest::header::HeaderMap, bytes::Bytes)> {
        let response = builder.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => bail!("{}", body.error.message),
                Err(_) => bail!(
                    "the control API answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        }
        Ok((headers, bytes))
    }

    pub async fn send<T: DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let (_, bytes) = self.send_raw(builder).await?;
        if bytes.is_empty() {
            // 204: decode `null`.
            return Ok(serde_json::from_slice(b"null")?);
        }
        serde_json::from_slice(&bytes)
            .context("the control API sent an answer this client cannot read")
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        // The root cause says what went wrong (refused, a certificate…).
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        if cause.to_string().contains("certificate") || cause.to_string().contains("Certificate") {
            anyhow::anyhow!(
                "cannot reach the control API at {}: {cause}; if the server uses a certificate of its own, point GUST_CA_CERT at it (PEM)",
                self.base
            )
        } else if e.is_connect() {
            anyhow::anyhow!(
                "cannot reach the control API at {} ({cause}); start it with `gust up` or set GUST_API / --api",
                self.base
            )
        } else {
            anyhow::anyhow!(
                "the request to the control API at {} failed: {e}",
                self.base
            )
        }
    }
}
