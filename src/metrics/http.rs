//! The metrics endpoint: a small HTTP/1.1 server (hyper) on
//! `metrics_listen`. It takes at most [`MAX_HTTP_CONNECTIONS`] connections
//! at once, one request each, gives a client [`HEADER_TIMEOUT`] to send its
//! request head (a slow client cannot pin it), and keeps answering until
//! the process exits (`/health` says "stopping" during the drain).

use super::{render, Exporter};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub const MAX_HTTP_CONNECTIONS: usize = 64;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole exchange (a scrape included) ends within this, so a client that
/// stops reading the response cannot hold its slot for ever.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `/metrics` and `/health` on `listener` for as long as the
/// process runs: through the drain after a shutdown began too, when
/// `/health` answers 503 "stopping".
pub async fn serve_http(listener: TcpListener, exporter: Arc<dyn Exporter>, shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let accepted = listener.accept().await;
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over the limit: close at once (a scraper retries next interval).
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let exporter = exporter.clone();
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let reply = respond(&*exporter, &stopping, &req);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                // One request per connection: a scrape is one request, and
                // no idle keep-alive connection can hold one of the slots.
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                tracing::debug!(error = %e, "metrics: connection ended");
            }
            drop(permit);
        });
    }
}

fn respond(
    exporter: &dyn Exporter,
    shutdown: &Shutdown,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(exporter),
        ),
        "/health" => {
            let health = if shutdown.is_triggered() {
                Err("stopping".to_string())
            } else {
                exporter.health()
            };
            match health {
                Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
                Err(why) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{why}\n"),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /health\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
