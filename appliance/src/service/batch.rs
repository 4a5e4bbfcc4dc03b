//! `POST /v1/client-tokens:batch`: NDJSON in, NDJSON out, in request order, a per-line
//! `{"error":…}` for a failing line (the batch goes on).
//!
//! Three stages run at once, joined by bounded channels, so a batch's memory is bounded whatever
//! its length:
//!
//! ```text
//!  request body ─▶ reader: lines (split on the blocking pool) ─▶ validation on the blocking pool
//!                                        │ in order, up to `validating()` chunks at once
//!                                        ▼
//!                  submitter: groups of up to GROUP tokens ─▶ signing pipeline (waits for room)
//!                                        │ one slot per group or failed line, in order
//!                                        ▼
//!                  writer: awaits each slot ─▶ NDJSON response stream
//! ```
//!
//! What a hostile or broken management point cannot do (SPEC §9): hold the batch open without
//! sending — each next complete line must arrive within `body_timeout_seconds`, else the batch
//! is cut there with a `request_timeout` line; send more than `max_batch_mb`; stream more than
//! `max_batches_per_mp` batches at once; or sign faster than its rate limit — every line draws
//! on the caller's bucket, and the submitter waits for it (the batch slows, nothing fails).

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse as _, Response};
use futures_util::StreamExt as _;
use serde_json::{Value, json};

use super::app::App;
use super::error::ApiError;
use super::limits::BatchSlot;
use super::tls::Caller;
use super::tokens::{parse, prepare_client};
use crate::pipeline::{GROUP, Item, PipelineError, Requester, Ticket};
use crate::policy::ClientTokenRequest;

/// Most bytes of a refused batch read and discarded so that its sender gets to read the answer.
const DRAIN_LIMIT: u64 = 64 << 20;

/// Largest line of a batch (and largest JSON body of the single-token endpoints).
pub const LINE_LIMIT: usize = 16 * 1024;
/// Most results a batch keeps in flight (signing or waiting for the audit commit) before it stops
/// reading its request: this and the line limit bound a batch's memory whatever its length.
pub const BATCH_IN_FLIGHT: usize = 4096;

/// Request chunks of one batch validated at the same time (more would only contend for the
/// same cores).
fn validating() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

/// Batch lines' results, in request order: a ticket for a group of consecutive lines queued for
/// signing, or an error found before signing.
enum Slot {
    Group(Ticket, usize),
    Failed(ApiError),
}

/// One line of the request: its bytes, or `None` for a line over [`LINE_LIMIT`].
type Line = Option<Vec<u8>>;

/// Splits a byte stream into lines in linear time: each byte is scanned once and copied once.
/// A line longer than [`LINE_LIMIT`] becomes `None` (an error for that line) and the rest of it is
/// skipped without being buffered. Blank lines are not items.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    skipping: bool,
}

impl LineSplitter {
    /// Feeds `chunk`; returns the lines it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        let mut rest = chunk;
        loop {
            // At a line's start, blank lines and leading white space are skipped in one tight
            // scan (a flood of newlines costs one pass, not a search per newline).
            if self.partial.is_empty() && !self.skipping {
                let blank = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
                rest = &rest[blank..];
            }
            let Some(at) = memchr::memchr(b'\n', rest) else { break };
            let (head, tail) = (&rest[..at], &rest[at + 1..]);
            rest = tail;
            if std::mem::take(&mut self.skipping) || self.partial.len() + head.len() > LINE_LIMIT {
                self.partial.clear();
                out.push(None);
                continue;
            }
            let line = if self.partial.is_empty() {
                head.to_vec()
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                line
            };
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.push(Some(line));
            }
        }
        if !self.skipping {
            if self.partial.len() + rest.len() > LINE_LIMIT {
                self.skipping = true;
                self.partial = Vec::new();
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
        out
    }

    /// The last line, if the body did not end with a newline.
    pub fn finish(&mut self) -> Option<Line> {
        if std::mem::take(&mut self.skipping) {
            return Some(None);
        }
        let line = std::mem::take(&mut self.partial);
        (!line.iter().all(u8::is_ascii_whitespace)).then_some(Some(line))
    }
}

type Checked = Vec<Result<Item, ApiError>>;

/// `POST /v1/client-tokens:batch`.
pub(super) async fn post_batch(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Response {
    let max = app.config.service.max_batches_per_mp;
    let Some(slot) = app.batches.enter(&caller.identity(), max) else {
        return ApiError::TooManyBatches(max).into_response();
    };
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let (slot_tx, slot_rx) = tokio::sync::mpsc::channel::<Slot>(BATCH_IN_FLIGHT / GROUP);
    let (checked_tx, checked_rx) = tokio::sync::mpsc::channel::<tokio::task::JoinHandle<Checked>>(validating());
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(write(Arc::clone(&app), slot_rx, out_tx, slot, done_tx));
    tokio::spawn(submit(Arc::clone(&app), caller.requester(), checked_rx, slot_tx));
    tokio::spawn(read(app, caller.identity(), body, checked_tx, done_rx));
    let stream = futures_util::stream::unfold(out_rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}

/// Reads and discards what is left of a refused request body, at most `max` bytes and until
/// `until` resolves, so that a client still sending reads the refusal before the connection
/// closes: closing a socket with unread data in it resets the connection, and the client may
/// lose the answer with it.
pub(super) async fn drain(
    mut stream: axum::body::BodyDataStream,
    until: impl std::future::Future<Output = ()>,
    max: u64,
) {
    let mut drained = 0u64;
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            drained += chunk.len() as u64;
            if drained > max {
                break;
            }
        }
    };
    tokio::select! {
        () = read => {}
        () = until => {}
    }
}

/// Ends the batch's input with `error` as its last line.
async fn cut(checked_tx: &tokio::sync::mpsc::Sender<tokio::task::JoinHandle<Checked>>, error: ApiError) {
    tracing::warn!(error = %error, "batch cut short");
    let failed = tokio::spawn(async move { vec![Err(error)] });
    let _ = checked_tx.send(failed).await;
}

/// The reader: request chunks → lines (split on the blocking pool) → validation on the blocking
/// pool, in order; cut off when the sender stalls or sends too much.
async fn read(
    app: Arc<App>,
    identity: String,
    body: Body,
    checked_tx: tokio::sync::mpsc::Sender<tokio::task::JoinHandle<Checked>>,
    mut answered: tokio::sync::watch::Receiver<bool>,
) {
    let mut stream = body.into_data_stream();
    let mut splitter = Some(LineSplitter::default());
    let (patience, cap) = (app.config.service.body_timeout, app.config.service.max_batch_bytes);
    let mut received = 0u64;
    let mut deadline = tokio::time::Instant::now() + patience;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(chunk) => chunk,
            Err(_) => {
                let secs = patience.as_secs();
                return cut(
                    &checked_tx,
                    ApiError::Timeout(format!("no complete line arrived for {secs} s; the batch ends here")),
                )
                .await;
            }
        };
        let (first, mut end) = match chunk {
            Some(Ok(bytes)) => (bytes, false),
            Some(Err(e)) => return cut(&checked_tx, ApiError::BadRequest(format!("request stream: {e}"))).await,
            None => (Bytes::new(), true),
        };
        // What else has arrived already goes along (up to 256 KiB): one trip to the blocking
        // pool per read, not per TLS record.
        let mut chunks = vec![first];
        let mut size = chunks[0].len();
        while !end && size < 256 * 1024 {
            match futures_util::FutureExt::now_or_never(stream.next()) {
                Some(Some(Ok(bytes))) => {
                    size += bytes.len();
                    chunks.push(bytes);
                }
                Some(Some(Err(e))) => {
                    return cut(&checked_tx, ApiError::BadRequest(format!("request stream: {e}"))).await;
                }
                Some(None) => end = true,
                None => break,
            }
        }
        received += size as u64;
        if received > cap {
            let mb = cap >> 20;
            let error = ApiError::TooLarge {
                code: "batch_too_large",
                message: format!(
                    "the batch is over {mb} MiB ([service] max_batch_mb); the lines before this one were answered, send the rest as another batch"
                ),
            };
            cut(&checked_tx, error).await;
            drop(checked_tx);
            // The client is still sending: let it finish (up to DRAIN_LIMIT bytes, 10 s after the
            // answer is complete) and read the answer to the end — closing a socket with unread
            // data resets it, and the client could lose the answer's last lines.
            let until = async {
                let _ = tokio::time::timeout(Duration::from_secs(30), answered.wait_for(|done| *done)).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            };
            return drain(stream, until, DRAIN_LIMIT).await;
        }
        // Splitting scans every byte: on the blocking pool, not the runtime's threads.
        let Some(mut s) = splitter.take() else { return };
        let split = tokio::task::spawn_blocking(move || {
            let mut lines: Vec<Line> = chunks.iter().flat_map(|c| s.push(c)).collect();
            if end {
                lines.extend(s.finish());
            }
            (s, lines)
        });
        let Ok((s, lines)) = split.await else { return };
        splitter = Some(s);
        // Every line draws on the caller's rate — valid or not — before it is validated: what
        // the bucket allows goes on at once, the rest after the wait (the batch slows, nothing
        // fails). Time spent waiting here or on our own backpressure is not the client's.
        let mut lines = lines.into_iter().peekable();
        while lines.peek().is_some() {
            let mut allowed = Vec::new();
            let mut wait = Duration::ZERO;
            while wait.is_zero()
                && let Some(line) = lines.next()
            {
                allowed.push(line);
                wait = app.limiter.reserve(&identity, 1);
            }
            if !validate(&app, allowed, &checked_tx).await {
                return;
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            deadline = tokio::time::Instant::now() + patience;
        }
        if end {
            return;
        }
    }
}

/// Validates `lines` on the blocking pool and queues the result, in order; false once the
/// batch has gone away.
async fn validate(
    app: &Arc<App>,
    lines: Vec<Line>,
    checked_tx: &tokio::sync::mpsc::Sender<tokio::task::JoinHandle<Checked>>,
) -> bool {
    if lines.is_empty() {
        return true;
    }
    let a = Arc::clone(app);
    let handle = tokio::task::spawn_blocking(move || {
        lines
            .into_iter()
            .map(|line| match line {
                None => Err(ApiError::BadRequest(format!("a line is longer than {LINE_LIMIT} bytes"))),
                Some(l) => prepare_client(&a, &parse::<ClientTokenRequest>(&l)?),
            })
            .collect::<Checked>()
    });
    checked_tx.send(handle).await.is_ok()
}

/// The submitter: validated lines → pipeline in groups (waiting for room: backpressure), in order.
async fn submit(
    app: Arc<App>,
    requester: Requester,
    mut checked_rx: tokio::sync::mpsc::Receiver<tokio::task::JoinHandle<Checked>>,
    slot_tx: tokio::sync::mpsc::Sender<Slot>,
) {
    // Consecutive good lines go to the workers in groups; a bad line keeps its place.
    let mut group: Vec<Item> = Vec::with_capacity(GROUP);
    while let Some(handle) = checked_rx.recv().await {
        let checked = handle.await.unwrap_or_else(|e| vec![Err(ApiError::Internal(e.to_string()))]);
        for item in checked {
            match item {
                Ok(ok) => {
                    group.push(ok);
                    if group.len() == GROUP && !flush(&app, &requester, &mut group, &slot_tx).await {
                        return;
                    }
                }
                Err(e) => {
                    if !flush(&app, &requester, &mut group, &slot_tx).await
                        || slot_tx.send(Slot::Failed(e)).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
        // Nothing more is ready: what is grouped goes now rather than wait for more lines.
        if checked_rx.is_empty() && !flush(&app, &requester, &mut group, &slot_tx).await {
            return;
        }
    }
    let _ = flush(&app, &requester, &mut group, &slot_tx).await;
}

/// Queues the grouped lines for signing (waiting for room: backpressure) and passes their slot
/// on; false once the client has gone away.
async fn flush(
    app: &App,
    requester: &Requester,
    group: &mut Vec<Item>,
    slot_tx: &tokio::sync::mpsc::Sender<Slot>,
) -> bool {
    if group.is_empty() {
        return true;
    }
    let items = std::mem::replace(group, Vec::with_capacity(GROUP));
    let n = items.len();
    let slots = match app.pipeline.submit(items, requester.clone()).await {
        Ok(ticket) => vec![Slot::Group(ticket, n)],
        // Every line of the group gets its answer.
        Err(e) => {
            tracing::warn!(error = %e, "batch group not queued");
            (0..n).map(|_| Slot::Failed(ApiError::from(PipelineError::Stopped))).collect()
        }
    };
    for slot in slots {
        if slot_tx.send(slot).await.is_err() {
            return false;
        }
    }
    true
}

/// The writer: awaits each slot in order and streams its lines.
async fn write(
    app: Arc<App>,
    mut slot_rx: tokio::sync::mpsc::Receiver<Slot>,
    out_tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    _slot: BatchSlot,
    done: tokio::sync::watch::Sender<bool>,
) {
    let mut items = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(slot) = slot_rx.recv().await {
        let lines: Vec<Value> = match slot {
            Slot::Group(t, n) => match t.await {
                Ok(results) => results
                    .into_iter()
                    .map(|r| match r {
                        Ok(token) => json!({"token": token.token, "expires": token.expires}),
                        Err(e) => ApiError::from(e).to_json(),
                    })
                    .collect(),
                Err(_) => vec![ApiError::Unavailable("the service is stopping".into()).to_json(); n],
            },
            Slot::Failed(e) => vec![e.to_json()],
        };
        for line in lines {
            items += 1;
            // Serialising a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut buf, &line);
            buf.push(b'\n');
        }
        // Flush when nothing more is ready, or the buffer is large.
        if slot_rx.is_empty() || buf.len() > 48 * 1024 {
            if out_tx.send(Ok(Bytes::from(std::mem::take(&mut buf)))).await.is_err() {
                break;
            }
            buf = Vec::with_capacity(64 * 1024);
        }
    }
    if !buf.is_empty() {
        let _ = out_tx.send(Ok(Bytes::from(buf))).await;
    }
    app.metrics.batch_size.observe(items as f64);
    let _ = done.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<Option<String>> {
        let mut s = LineSplitter::default();
        let mut out: Vec<Line> = chunks.iter().flat_map(|c| s.push(c)).collect();
        out.extend(s.finish());
        out.into_iter().map(|l| l.map(|b| String::from_utf8(b).unwrap())).collect()
    }

    #[test]
    fn splits_across_chunks_skips_blank_lines_and_marks_long_ones() {
        assert_eq!(lines(&[b"a\nb", b"c\n\n  \nd"]), [Some("a".into()), Some("bc".into()), Some("d".into())]);
        let long = vec![b'x'; LINE_LIMIT + 1];
        assert_eq!(lines(&[b"a\n", &long, b"\nb\n"]), [Some("a".into()), None, Some("b".into())]);
        // A long line arriving in pieces is skipped, not buffered.
        let half = vec![b'x'; LINE_LIMIT / 2 + 1];
        assert_eq!(lines(&[&half, &half, &half, b"\nok"]), [None, Some("ok".into())]);
        assert_eq!(lines(&[&long]), [None], "a long last line without a newline");
        let exact = vec![b'y'; LINE_LIMIT];
        assert_eq!(lines(&[&exact[..10], &exact[10..], b"\n"]).len(), 1);
        assert!(lines(&[&exact[..10], &exact[10..], b"\n"])[0].is_some(), "exactly the limit is allowed");
    }
}
