//! The listeners: the mTLS API (each handshake reads the current TLS configuration) and the
//! plain-HTTP ops listener. Both stop accepting on the stop signal; the API finishes the requests
//! in flight (for at most 30 s).

use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
    let connections = tokio::sync::watch::Sender::new(0usize);
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
        let open_connection = Stream::open(&connections);
        let (app, stop) = (Arc::clone(&app), stop.clone());
        tokio::spawn(async move {
            let super::admission::Admitted { connection: _connection, source } = admitted;
            let Ok(handshake) = app.admission.handshake(&source).await else { return };
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
            let accept = start.into_stream(config).into_fallible();
            let tls = match tokio::time::timeout_at(started + handshake_timeout, accept).await {
                Ok(Ok(tls)) => tls,
                Ok(Err((e, io))) => {
                    app.admission.handshake_ended(Outcome::Failed);
                    drop(handshake);
                    tracing::debug!(%peer, error = %e, "TLS handshake refused");
                    linger(io).await;
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
            // One MP holds at most `max_connections_per_mp` of the appliance's connections.
            let limit = app.config.service.max_connections_per_mp;
            let Ok(_place) = app.mp_connections.enter(&caller.identity(), limit, u32::MAX) else {
                app.admission.refused_after_handshake();
                tracing::debug!(%peer, subject = %caller.subject, "connection refused: the MP has max_connections_per_mp open");
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let streams = tokio::sync::watch::Sender::new(0usize);
            let counted = streams.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(caller.clone());
                let open = Stream::open(&counted);
                let answer = router.clone().oneshot(req);
                async move {
                    // The stream counts as open until its answer's body is done with.
                    let response = answer.await?;
                    Ok::<_, std::convert::Infallible>(response.map(|body| {
                        axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                            let _ = &open;
                            frame
                        }))
                    }))
                }
            });
            let progress = super::watch::Progress::new(app.config.service.body_timeout * 6);
            let io = TokioIo::new(super::watch::Watched::new(tls, Arc::clone(&progress)));
            let stuck = super::watch::stuck(progress);
            let ended = if h2 {
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(app.config.service.max_streams_per_connection)
                    .max_header_list_size(H2_MAX_HEADER_LIST)
                    .keep_alive_interval(Some(header_timeout * 3))
                    .keep_alive_timeout(header_timeout)
                    .max_send_buf_size(H2_SEND_BUFFER)
                    // A stream may hold an eighth of the connection's window unread (a batch
                    // waiting for its window): others on the connection still get theirs.
                    .initial_stream_window_size(H2_STREAM_WINDOW)
                    .initial_connection_window_size(H2_STREAM_WINDOW * 8);
                let conn = std::pin::pin!(builder.serve_connection(io, service));
                // HTTP/2 has no header deadline of its own: a connection with no stream open for
                // the header deadline is closed (GOAWAY), as an idle HTTP/1.1 one is.
                let idle = idle(streams.subscribe(), header_timeout);
                run(conn, stop.clone(), idle, stuck, header_timeout, |c| c.graceful_shutdown()).await
            } else {
                let conn = std::pin::pin!(
                    hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .max_buf_size(64 * 1024)
                        .serve_connection(io, service)
                );
                run(conn, stop.clone(), std::future::pending(), stuck, header_timeout, |c| c.graceful_shutdown()).await
            };
            drop(open_connection);
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    // Connections finish the requests in flight, for DRAIN_TIMEOUT at most.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, connections.subscribe().wait_for(|n| *n == 0)).await;
}

/// How long a refused connection is read (and what it sends discarded) before it is closed.
const LINGER: Duration = Duration::from_secs(1);

/// Closes a connection whose handshake was refused so that the client reads the alert: in TLS
/// 1.3 a client sends its certificate and, at once, its first request (or HTTP/2 preface);
/// closing a socket with that unread resets the connection, and the client may lose the alert
/// that says why (`certificate revoked`, `unknown ca`). The write side is shut (after the
/// alert), then what the client sends is read and dropped — 64 KiB and [`LINGER`] at most.
async fn linger(mut io: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = io.shutdown().await;
    let drain = async {
        let (mut buf, mut total) = ([0u8; 4096], 0usize);
        while let Ok(n @ 1..) = io.read(&mut buf).await {
            total += n;
            if total > 64 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Largest header block of an HTTP/2 request (HTTP/1.1's is bounded by the read buffer).
const H2_MAX_HEADER_LIST: u32 = 32 * 1024;

/// Bytes a client may send on one HTTP/2 stream before the service has read them.
const H2_STREAM_WINDOW: u32 = 128 * 1024;

/// Most answer bytes an HTTP/2 stream buffers beyond what its client has room for (HTTP/1.1
/// buffers no more than its socket does).
const H2_SEND_BUFFER: usize = 64 * 1024;

/// One open stream (or HTTP/1.1 request) of a connection, or one open connection: counted in a
/// watch channel while it lives.
struct Stream(tokio::sync::watch::Sender<usize>);

impl Stream {
    fn open(count: &tokio::sync::watch::Sender<usize>) -> Stream {
        count.send_modify(|n| *n += 1);
        Stream(count.clone())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Resolves once no stream has been open for `patience`.
async fn idle(mut open: tokio::sync::watch::Receiver<usize>, patience: Duration) {
    loop {
        if open.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        tokio::select! {
            () = tokio::time::sleep(patience) => {
                if *open.borrow() == 0 {
                    return;
                }
            }
            _ = open.changed() => {}
        }
    }
}

/// Drives a connection to its end. On the stop signal, or once `idle` resolves, it is asked to
/// finish what it has in flight and close — and dropped if it has not within `grace` (or, on
/// stop, [`DRAIN_TIMEOUT`]): a peer that never completes HTTP/2's handshake or never answers the
/// closing ping cannot keep it. Once `stuck` resolves (an answer waiting for a peer that sends
/// nothing) it is dropped at once.
async fn run<C, E>(
    mut conn: std::pin::Pin<&mut C>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    idle: impl std::future::Future<Output = ()>,
    stuck: impl std::future::Future<Output = ()>,
    grace: Duration,
    shut: impl Fn(std::pin::Pin<&mut C>),
) -> Result<(), E>
where
    C: std::future::Future<Output = Result<(), E>>,
{
    let (mut idle, mut stuck) = (std::pin::pin!(idle), std::pin::pin!(stuck));
    let deadline = tokio::time::sleep(Duration::from_secs(365 * 86_400));
    let mut deadline = std::pin::pin!(deadline);
    let mut closing = false;
    loop {
        tokio::select! {
            ended = conn.as_mut() => return ended,
            () = stuck.as_mut() => {
                tracing::debug!("connection dropped: an answer waited for a peer that sent nothing");
                return Ok(());
            }
            () = deadline.as_mut(), if closing => return Ok(()),
            _ = stop.wait_for(|stop| *stop), if !closing => {
                closing = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                shut(conn.as_mut());
            }
            () = idle.as_mut(), if !closing => {
                closing = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + grace);
                shut(conn.as_mut());
            }
        }
    }
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
