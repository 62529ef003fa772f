//! Pushes each daemon window:
//!
//! - `--push URL`: to a Pyroscope-compatible ingest endpoint, `POST {URL}/ingest` with
//!   `format=pprof`, the window's `from`/`until`, the application name with a `host` label, and
//!   the pprof profile as the multipart field `profile` (what Pyroscope's own clients send);
//! - `--otlp URL`: to an OpenTelemetry collector, `POST {URL}/v1development/profiles` with the
//!   window as an `ExportProfilesServiceRequest` (OTLP/HTTP, `application/x-protobuf`).
//!
//! Plain `http://` only (put a TLS-terminating proxy in front for https). A push that fails is
//! logged and counted; profiling goes on.
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use crate::error::{ExitCode, fatal};

/// Where and as what windows are pushed.
#[derive(Clone, Debug)]
pub struct Target {
    /// host:port to connect to.
    authority: String,
    /// Path prefix before `/ingest` (no trailing slash).
    prefix: String,
    /// Application name with labels: `pyebpf{host=web-1}`.
    pub name: String,
}

impl Target {
    /// Parses `http://host:port[/prefix]`.
    pub fn parse(url: &str, app: &str) -> anyhow::Result<Self> {
        let (authority, prefix) = http_endpoint("--push", url)?;
        if app.is_empty() || !app.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(fatal(ExitCode::Usage, format!("--push-name '{app}': use letters, digits, '.', '_' and '-'")));
        }
        let hostname =
            hostname().chars().filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c)).collect::<String>();
        Ok(Target { authority, prefix, name: format!("{app}{{host={hostname}}}") })
    }

    /// The request path and query for one window.
    pub fn path(&self, from_unix: u64, until_unix: u64, sample_rate: u32) -> String {
        format!(
            "{}/ingest?name={}&from={from_unix}&until={until_unix}&format=pprof&spyName=pyebpf&sampleRate={sample_rate}",
            self.prefix,
            percent_encode(&self.name)
        )
    }

    /// Sends one window's gzipped pprof profile.
    pub async fn push(&self, path: String, pprof: Vec<u8>) -> anyhow::Result<()> {
        let boundary = "pyebpf-profile-boundary-7d1c";
        let mut body = Vec::with_capacity(pprof.len() + 256);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&pprof);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

        post(&self.authority, path, &format!("multipart/form-data; boundary={boundary}"), body).await
    }
}

/// Where `--otlp` sends windows: an OTLP/HTTP collector's profiles endpoint.
#[derive(Clone, Debug)]
pub struct OtlpTarget {
    authority: String,
    /// `{prefix}/v1development/profiles`.
    pub path: String,
}

impl OtlpTarget {
    /// Parses `http://host:port[/prefix]`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (authority, prefix) = http_endpoint("--otlp", url)?;
        Ok(OtlpTarget { authority, path: format!("{prefix}/v1development/profiles") })
    }

    /// Sends one window's `ExportProfilesServiceRequest`.
    pub async fn push(&self, request: Vec<u8>) -> anyhow::Result<()> {
        post(&self.authority, self.path.clone(), "application/x-protobuf", request).await
    }
}

/// (host:port, path prefix without a trailing slash) of a plain `http://` URL given to `flag`.
fn http_endpoint(flag: &str, url: &str) -> anyhow::Result<(String, String)> {
    let bad = |why: &str| fatal(ExitCode::Usage, format!("{flag} '{url}': {why}"));
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(bad("only http:// is supported (use a local TLS proxy for https)")),
        None => return Err(bad("give a full URL, e.g. http://127.0.0.1:4040")),
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
    Ok((format!("{host}:{port}"), uri.path().trim_end_matches('/').to_string()))
}

/// One HTTP/1.1 POST; any answer but 2xx is an error (with the body's text).
async fn post(authority: &str, path: String, content_type: &str, body: Vec<u8>) -> anyhow::Result<()> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(authority))
        .await
        .context("connect timed out")?
        .with_context(|| format!("cannot connect to {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("push connection: {e}");
        }
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", authority)
        .header("content-type", content_type)
        .header("user-agent", concat!("pyebpf/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(bytes::Bytes::from(body)))?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .context("no answer within 10 s")??;
    let status = response.status();
    if !status.is_success() {
        let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        anyhow::bail!("{status}: {}", String::from_utf8_lossy(&text).trim());
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Percent-encodes a query value (everything but unreserved characters).
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names() {
        let t = Target::parse("http://127.0.0.1:4040", "shop.api").unwrap();
        assert_eq!(t.authority, "127.0.0.1:4040");
        assert!(t.name.starts_with("shop.api{host="));
        let path = t.path(10, 20, 99);
        assert!(path.starts_with("/ingest?name=shop.api%7Bhost%3D"), "{path}");
        assert!(path.ends_with("&from=10&until=20&format=pprof&spyName=pyebpf&sampleRate=99"), "{path}");
        assert_eq!(
            Target::parse("http://pyro:8080/prefix/", "a").unwrap().path(1, 2, 3)[..14].to_string(),
            "/prefix/ingest"
        );
        assert_eq!(Target::parse("http://pyro", "a").unwrap().authority, "pyro:80");
        assert!(Target::parse("https://pyro", "a").is_err());
        assert!(Target::parse("pyro:4040", "a").is_err());
        assert!(Target::parse("http://pyro", "a b").is_err());
        assert_eq!(OtlpTarget::parse("http://otel:4318").unwrap().path, "/v1development/profiles");
        assert_eq!(OtlpTarget::parse("http://otel:4318/otlp/").unwrap().path, "/otlp/v1development/profiles");
        assert_eq!(OtlpTarget::parse("http://otel").unwrap().authority, "otel:80");
        assert!(OtlpTarget::parse("https://otel:4318").is_err());
    }
}
