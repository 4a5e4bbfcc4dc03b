//! The listeners: the mTLS API (each handshake reads the current TLS configuration) and the
//! plain-HTTP ops listener. Both stop accepting on the stop signal; the API finishes the requests
//! in flight (for at most 30 s).

use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use super::admission::Outcome;
use super::app::App;
use super::routes;
use super::tls::Caller;

/// How long a new connection may take to send its ClientHello (it holds a handshake slot
/// meanwhile; a real client sends it at once).
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a request's headers may take on the ops listener.
const OPS_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the service waits for requests in flight when it stops.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause after a failed `accept` (out of file descriptors, say): doubled on each failure in
/// a row, from 10 ms up to 1 s, so a full table never turns the accept loop into a busy loop.
fn backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Serves the mTLS API on `listener` until `stop`.
pub async fn serve_api(listener: TcpListener, app: Arc<App>, stop: tokio::sync::watch::Receiver<bool>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let router = routes::router(Arc::clone(&app));
    let mut stop_accepting = stop.clone();
    let (handshake_timeout, header_timeout) = (app.config.service.handshake_timeout, app.config.service.header_timeout);
    let mut pause = Duration::ZERO;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    pause = Duration::ZERO;
                    a
                }
                Err(_) => {
                    app.admission.accept_failed();
                    pause = backoff(pause);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => continue,
                        _ = stop_accepting.changed() => break,
                    }
                }
            },
            _ = stop_accepting.changed() => break,
        };
        // Refused connections are closed at once, before any device work (counted, and logged
        // as a rate by the admission report).
        let Ok(admitted) = app.admission.admit(peer.ip()) else { continue };
        // Small requests and answers: no waiting for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let watcher = graceful.watcher();
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let super::admission::Admitted { connection: _connection, handshake } = admitted;
            // The ClientHello must come at once — a connection that sends nothing holds its
            // handshake slot for CLIENT_HELLO_TIMEOUT at most — and the whole handshake within
            // the handshake deadline.
            let started = tokio::time::Instant::now();
            let hello = tokio::time::timeout(
                CLIENT_HELLO_TIMEOUT.min(handshake_timeout),
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream),
            );
            let start = match hello.await {
                Ok(Ok(start)) => start,
                Ok(Err(e)) => {
                    app.admission.handshake_ended(Outcome::Failed);
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    app.admission.handshake_ended(Outcome::Timeout);
                    tracing::debug!(%peer, "no ClientHello in time");
                    return;
                }
            };
            // The configuration of this handshake: a rotation or revocation swapped in since
            // takes effect here, connections already open keep theirs.
            let config = Arc::clone(&app.tls.load().config);
            let tls = match tokio::time::timeout_at(started + handshake_timeout, start.into_stream(config)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    app.admission.handshake_ended(Outcome::Failed);
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    app.admission.handshake_ended(Outcome::Timeout);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            drop(handshake);
            // Acknowledge the first request's pieces at once: a client that leaves Nagle's
            // algorithm on and writes headers and body apart would otherwise wait for our
            // delayed ACK (~40 ms) before sending the body.
            let _ = rustix::net::sockopt::set_tcp_quickack(tls.get_ref().0.as_fd(), true);
            let Some(caller) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| Caller::of(c))
            else {
                app.admission.handshake_ended(Outcome::Failed);
                return;
            };
            app.admission.handshake_ended(Outcome::Ok);
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(caller.clone());
                router.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
}

/// Serves the ops endpoints, plain HTTP, on `listener` until `stop`.
pub async fn serve_ops(listener: TcpListener, app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let router = routes::ops_router(app);
    let mut pause = Duration::ZERO;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    pause = Duration::ZERO;
                    a
                }
                Err(_) => {
                    pause = backoff(pause);
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                router.clone().oneshot(req)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(OPS_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
