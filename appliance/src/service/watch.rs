//! A connection's progress, watched at its socket: [`Watched`] wraps the TLS stream and notes
//! when it last read something and since when a write has been waiting for the peer. A
//! connection that has had an answer waiting its limit (six body deadlines: 60 s by default)
//! while the peer sent nothing either is
//! dropped — the peer neither reads nor writes (HTTP/2's flow control lets a client hold a stream
//! open without taking a byte; an HTTP/1.1 client can simply stop reading). A peer that is still
//! sending (a half-duplex batch) or reading is never stuck.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What the socket has seen, in milliseconds since the connection began (0: never).
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    limit: u64,
    last_read: AtomicU64,
    write_waiting_since: AtomicU64,
}

impl Progress {
    /// A connection's progress, from now; stuck once an answer has waited `limit` for a peer
    /// that sent nothing meanwhile.
    pub fn new(limit: Duration) -> Arc<Progress> {
        Arc::new(Progress {
            start: Instant::now(),
            limit: limit.as_millis() as u64,
            last_read: AtomicU64::new(1),
            write_waiting_since: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        (self.start.elapsed().as_millis() as u64).max(1)
    }

    /// Whether an answer has waited the limit for the peer while it sent nothing.
    pub fn stuck(&self) -> bool {
        let now = self.now();
        let waiting = self.write_waiting_since.load(Ordering::Relaxed);
        let limit = self.limit;
        waiting != 0
            && now.saturating_sub(waiting) >= limit
            && now.saturating_sub(self.last_read.load(Ordering::Relaxed)) >= limit
    }

    /// A write (or flush) returned: `pending` if it waits for the peer.
    fn wrote(&self, pending: bool) {
        if pending {
            let _ = self.write_waiting_since.compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed);
        } else {
            self.write_waiting_since.store(0, Ordering::Relaxed);
        }
    }
}

/// Resolves once `progress` is stuck (checked every second).
pub async fn stuck(progress: Arc<Progress>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if progress.stuck() {
            return;
        }
    }
}

/// A stream whose reads and writes are noted in a [`Progress`].
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S> Watched<S> {
    /// Watches `inner`.
    pub fn new(inner: S, progress: Arc<Progress>) -> Watched<S> {
        Watched { inner, progress }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.progress.now();
            self.progress.last_read.store(now, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        self.progress.wrote(poll.is_pending());
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress.wrote(poll.is_pending());
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress.wrote(poll.is_pending());
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stuck_only_when_an_answer_waits_and_the_peer_sends_nothing() {
        const STUCK: Duration = Duration::from_secs(60);
        let p = Progress::new(STUCK);
        tokio::time::advance(STUCK * 2).await;
        assert!(!p.stuck(), "nothing to write: an idle connection is not stuck (deadlines see to it)");
        p.wrote(true);
        tokio::time::advance(STUCK / 2).await;
        p.last_read.store(p.now(), Ordering::Relaxed);
        tokio::time::advance(STUCK / 2 + Duration::from_millis(1)).await;
        assert!(!p.stuck(), "the peer sent something meanwhile");
        tokio::time::advance(STUCK / 2).await;
        assert!(p.stuck());
        p.wrote(false);
        assert!(!p.stuck(), "the peer took the answer");
    }
}
