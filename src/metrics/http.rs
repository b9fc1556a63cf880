//! The `--metrics-addr` HTTP endpoint: `/metrics` (Prometheus text format), `/healthz`
//! (200 while the process runs) and `/readyz` (200 once the node is ready, 503 before and
//! once shutdown begins).
//!
//! HTTP/1.1 by hyper on the node's tokio runtime, never on a connection thread. Bounded: at
//! most [`MAX_SCRAPE_CONNECTIONS`] connections at once (more are closed at accept), request
//! heads of at most [`MAX_REQUEST_BYTES`], read within [`HEADER_READ_TIMEOUT`], and a
//! connection lives at most [`MAX_CONNECTION_TIME`], so a slow or idle client holds one of
//! a few permits for a bounded time and never the node.

use super::Scrape;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Metrics connections served at once; one more is closed as soon as it is accepted.
/// Prometheus uses one per target; a few more leave room for curl and health checkers.
pub const MAX_SCRAPE_CONNECTIONS: usize = 8;

/// Largest request head (request line and headers) read, in bytes: hyper's minimum buffer.
/// A bigger one is answered 431 and closed.
pub const MAX_REQUEST_BYTES: usize = 8192;

/// A request head must arrive within this time of the connection (or of the previous
/// response, on a kept-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a metrics connection is kept, kept-alive or not; the client reconnects.
pub const MAX_CONNECTION_TIME: Duration = Duration::from_secs(30);

/// Serves the endpoint on `listener` until `stop` is cancelled.
pub(crate) async fn serve(listener: TcpListener, scrape: Arc<Scrape>, stop: CancellationToken) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint: accept failed");
                // EMFILE and friends: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%addr, limit = MAX_SCRAPE_CONNECTIONS, "metrics endpoint: too many connections, closing this one");
            continue;
        };
        let scrape = scrape.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&scrape, &request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_BYTES);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                served = tokio::time::timeout(MAX_CONNECTION_TIME, conn) => {
                    if let Ok(Err(error)) = served {
                        tracing::debug!(%addr, %error, "metrics connection ended");
                    }
                }
            }
            drop(permit);
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn respond<B>(scrape: &Scrape, request: &Request<B>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            scrape.render(),
        ),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" if scrape.ready() => text(StatusCode::OK, PLAIN, "ready\n".into()),
        "/readyz" if scrape.stopping.load(std::sync::atomic::Ordering::Relaxed) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "not ready: shutting down\n".into(),
        ),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "not ready (EPMD registration or storage recovery under way)\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).expect("request")
    }

    /// /readyz is 503 before the node is ready and again once shutdown begins; /healthz
    /// stays 200 throughout.
    async fn body(response: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn readyz_turns_503_when_shutdown_begins() {
        let scrape = Scrape {
            node: std::sync::OnceLock::new(),
            started: std::time::Instant::now(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        };
        assert_eq!(
            respond(&scrape, &get("/readyz")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        scrape
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let response = respond(&scrape, &get("/readyz"));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(response).await, "not ready: shutting down\n");
        assert_eq!(respond(&scrape, &get("/healthz")).status(), StatusCode::OK);
        assert!(!scrape.ready());
        assert!(scrape.render().contains("kvnode_ready 0"));
    }
}
