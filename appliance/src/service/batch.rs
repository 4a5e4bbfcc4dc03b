//! `POST /v1/client-tokens:batch`: NDJSON in, NDJSON out, in request order, a per-line
//! `{"error":…}` for a failing line (the batch goes on).
//!
//! Four stages run at once:
//!
//! ```text
//!  request body ─▶ reader: lines (split on the blocking pool) ─▶ validation on the blocking pool
//!                                        │ in order, up to `validating()` chunks at once
//!                                        ▼
//!                  collector: awaits each chunk's validation, in order
//!                                        ▼
//!                  submitter: groups of up to GROUP tokens ─▶ signing pipeline (waits for room)
//!                                        │ one slot per group or failed line, in order
//!                                        ▼
//!                  writer: awaits each slot ─▶ NDJSON response stream ─▶ the connection
//! ```
//!
//! A batch's memory is bounded by its **window**: the reader stops reading once
//! `[service] max_batch_lines` lines are read that the connection has not yet taken as answers.
//! Nothing else between the reader and the writer holds the reader back — not the signing
//! queue, not the device — so a client that sends its whole body before reading anything (half
//! duplex: Python `requests`, .NET `HttpClient` over HTTP/1.1, `curl --data-binary`) always gets
//! a batch of up to `max_batch_lines` lines read to its end. A client that reads while it sends
//! moves the window and streams batches of any length. A full window whose answers the client
//! has not taken for [`STALL`] is a half-duplex client with a batch too long: the batch is cut
//! there with a `batch_too_long` line after the answers of the lines read, and the rest of the
//! body is read and discarded so that the client finishes sending and reads its answer — never
//! a stall.
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
use super::limits::{Full, Place};
use super::tls::Caller;
use super::tokens::{parse, prepare_client};
use crate::pipeline::{GROUP, Item, PipelineError, Requester, Ticket};
use crate::policy::ClientTokenRequest;

/// Most bytes of a refused batch read and discarded so that its sender gets to read the answer.
const DRAIN_LIMIT: u64 = 64 << 20;

/// The media types a batch body may be sent as.
pub const NDJSON: &[&str] = &["application/x-ndjson", "application/ndjson", "application/jsonl"];

/// Largest line of a batch (and largest JSON body of the single-token endpoints).
pub const LINE_LIMIT: usize = 16 * 1024;

/// How long a full window's answers may wait for the client to take them before the batch is
/// taken for a half-duplex one that is too long (a client reading while it sends takes them at
/// once; one that sends first takes none until it has sent all).
pub const STALL: Duration = Duration::from_secs(2);

/// How far a batch has got: lines read from the request, lines whose answers the connection has
/// taken, and since when the writer has been waiting for the connection to take more.
struct Window {
    read: std::sync::atomic::AtomicU64,
    delivered: tokio::sync::watch::Sender<u64>,
    waiting_since: std::sync::Mutex<Option<tokio::time::Instant>>,
    closed: std::sync::atomic::AtomicBool,
}

/// What the reader finds when it waits for the window.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    /// Fewer than the window's lines are outstanding: read on.
    Free,
    /// The window is full and the client has taken no answer for [`STALL`].
    Stalled,
    /// The answer has ended (the client went away): stop.
    Closed,
}

impl Window {
    fn new() -> Window {
        Window {
            read: std::sync::atomic::AtomicU64::new(0),
            delivered: tokio::sync::watch::Sender::new(0),
            waiting_since: std::sync::Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The answer has ended: a reader waiting for room stops.
    fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Relaxed);
        self.delivered.send_modify(|_| {});
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn read(&self) -> u64 {
        self.read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lines read whose answers the connection has not taken.
    fn outstanding(&self) -> u64 {
        self.read().saturating_sub(*self.delivered.borrow())
    }

    fn add_read(&self, n: usize) {
        self.read.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn delivered(&self, n: u64) {
        self.delivered.send_modify(|d| *d += n);
    }

    fn waiting(&self, since: Option<tokio::time::Instant>) {
        *self.waiting_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = since;
    }

    /// Whether the client has left answers untaken for `STALL`.
    fn stalled(&self) -> bool {
        self.waiting_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|since| since.elapsed() >= STALL)
    }

    /// Waits until fewer than `max` lines are outstanding, the client has stopped taking answers
    /// with the window full (it sends everything before reading), or the answer has ended.
    async fn room(&self, max: u64) -> Room {
        let mut delivered = self.delivered.subscribe();
        loop {
            let read = self.read();
            let wait = delivered.wait_for(|d| read.saturating_sub(*d) < max || self.is_closed());
            match tokio::time::timeout(Duration::from_millis(250), wait).await {
                _ if self.is_closed() => return Room::Closed,
                Ok(_) => return Room::Free,
                Err(_) if self.stalled() => return Room::Stalled,
                Err(_) => {}
            }
        }
    }
}

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

/// A chunk of lines being validated, and how many lines it holds.
type Validating = (tokio::task::JoinHandle<Checked>, usize);

/// `POST /v1/client-tokens:batch`.
pub(super) async fn post_batch(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    if let Err(e) = super::routes::content_type(&headers, NDJSON) {
        super::routes::discard(body, app.config.service.body_timeout);
        return e.into_response();
    }
    let (per_mp, total) = (app.config.service.max_batches_per_mp, app.config.service.max_batches);
    let slot = match app.batches.enter(&caller.identity(), per_mp, total) {
        Ok(slot) => slot,
        Err(Full::Caller(n)) => return ApiError::TooManyBatches(n).into_response(),
        Err(Full::Appliance(n)) => {
            return ApiError::Unavailable(format!(
                "the appliance already streams {n} batches ([service] max_batches); retry shortly"
            ))
            .into_response();
        }
    };
    let window = Arc::new(Window::new());
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    // Unbounded between the stages: the window bounds what they hold, and nothing but the
    // window may stop the reader (a half-duplex client must be read to its end).
    let (slot_tx, slot_rx) = tokio::sync::mpsc::unbounded_channel::<Slot>();
    let (checked_tx, checked_rx) = tokio::sync::mpsc::unbounded_channel::<Checked>();
    let (validating_tx, validating_rx) = tokio::sync::mpsc::channel::<Validating>(validating());
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(write(Arc::clone(&app), Arc::clone(&window), slot_rx, out_tx, slot, done_tx));
    tokio::spawn(submit(Arc::clone(&app), caller.requester(), checked_rx, slot_tx));
    tokio::spawn(collect(validating_rx, checked_tx));
    tokio::spawn(read(app, window, caller.identity(), body, validating_tx, done_rx));
    let stream = futures_util::stream::unfold(out_rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    response
}

/// Reads and discards what is left of a refused request body — at most `max` bytes, each next
/// piece within `patience`, and until `until` resolves — so that a client still sending reads
/// the refusal before the connection closes: closing a socket with unread data in it resets the
/// connection, and the client may lose the answer with it.
pub(super) async fn drain(
    mut stream: axum::body::BodyDataStream,
    until: impl std::future::Future<Output = ()>,
    max: u64,
    patience: Duration,
) {
    let read = async {
        let mut drained = 0u64;
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout(patience, stream.next()).await {
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
async fn cut(validating_tx: &tokio::sync::mpsc::Sender<Validating>, error: ApiError) {
    tracing::warn!(error = %error, "batch cut short");
    let failed = tokio::spawn(async move { vec![Err(error)] });
    let _ = validating_tx.send((failed, 1)).await;
}

/// Cuts the batch with `error` and reads what is left of its body without keeping it: the
/// client finishes sending — up to `max` more bytes, each piece within `patience` — and reads
/// the answer to its end, and for 10 s after the answer is complete.
async fn cut_and_drain(
    validating_tx: tokio::sync::mpsc::Sender<Validating>,
    error: ApiError,
    stream: axum::body::BodyDataStream,
    mut answered: tokio::sync::watch::Receiver<bool>,
    max: u64,
    patience: Duration,
) {
    cut(&validating_tx, error).await;
    drop(validating_tx);
    let until = async move {
        let _ = answered.wait_for(|done| *done).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    drain(stream, until, max, patience).await;
}

/// The last line of a batch cut because its client sent more than `max_lines` lines without
/// reading; `read` lines were read and answered.
fn too_long(max_lines: u64, read: u64) -> ApiError {
    ApiError::TooLarge {
        code: "batch_too_long",
        message: format!(
            "the client sent more than {max_lines} lines ([service] max_batch_lines) without reading the answer; \
             the first {read} lines were read and are answered above, the rest was not read: send at most \
             {max_lines} lines per batch, or read the answer while sending (HTTP/2, or a full-duplex HTTP/1.1 client)"
        ),
    }
}

/// The reader: request chunks → lines (split on the blocking pool) → validation on the blocking
/// pool, in order; it waits while the window is full, and cuts the batch off when the sender
/// stalls, sends too much, or sends a batch too long without reading.
async fn read(
    app: Arc<App>,
    window: Arc<Window>,
    identity: String,
    body: Body,
    validating_tx: tokio::sync::mpsc::Sender<Validating>,
    answered: tokio::sync::watch::Receiver<bool>,
) {
    let mut stream = body.into_data_stream();
    let mut splitter = Some(LineSplitter::default());
    let service = &app.config.service;
    let (patience, cap, max_lines) = (service.body_timeout, service.max_batch_bytes, service.max_batch_lines);
    let mut received = 0u64;
    let mut deadline = tokio::time::Instant::now() + patience;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(chunk) => chunk,
            Err(_) => {
                let secs = patience.as_secs();
                return cut(
                    &validating_tx,
                    ApiError::Timeout(format!("no complete line arrived for {secs} s; the batch ends here")),
                )
                .await;
            }
        };
        let (first, mut end) = match chunk {
            Some(Ok(bytes)) => (bytes, false),
            Some(Err(e)) => return cut(&validating_tx, ApiError::BadRequest(format!("request stream: {e}"))).await,
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
                    return cut(&validating_tx, ApiError::BadRequest(format!("request stream: {e}"))).await;
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
            return cut_and_drain(validating_tx, error, stream, answered, DRAIN_LIMIT, patience).await;
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
        let Ok((s, lines)) = split.await else {
            return cut(&validating_tx, ApiError::Internal("the batch's lines could not be split".into())).await;
        };
        splitter = Some(s);
        // The window first: of these lines, only as many go on as it has room for; a full window
        // whose client takes no answers ends the batch here. Then every line draws on the
        // caller's rate — valid or not — before it is validated: what the bucket allows goes on
        // at once, the rest after the wait (the batch slows, nothing fails). Time spent waiting
        // here is not the client's.
        let mut lines = lines.into_iter().peekable();
        while lines.peek().is_some() {
            let room = match window.room(max_lines).await {
                Room::Free => max_lines.saturating_sub(window.outstanding()).max(1),
                Room::Closed => return,
                Room::Stalled => {
                    let error = too_long(max_lines, window.read());
                    let rest = (cap + DRAIN_LIMIT).saturating_sub(received);
                    return cut_and_drain(validating_tx, error, stream, answered, rest, patience).await;
                }
            };
            let mut allowed = Vec::new();
            let mut wait = Duration::ZERO;
            while wait.is_zero()
                && (allowed.len() as u64) < room
                && let Some(line) = lines.next()
            {
                allowed.push(line);
                wait = app.limiter.reserve(&identity, 1);
            }
            window.add_read(allowed.len());
            if !validate(&app, allowed, &validating_tx).await {
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

/// The collector: each chunk's validation, awaited in order, handed to the submitter at once
/// (so that a full signing queue never stops the reader; the window bounds what waits here).
async fn collect(
    mut validating_rx: tokio::sync::mpsc::Receiver<Validating>,
    checked_tx: tokio::sync::mpsc::UnboundedSender<Checked>,
) {
    while let Some((handle, n)) = validating_rx.recv().await {
        // A validation that failed (it cannot, but if it did) answers each of its lines: every
        // later answer keeps its line.
        let checked = handle.await.unwrap_or_else(|e| (0..n).map(|_| Err(ApiError::Internal(e.to_string()))).collect());
        if checked_tx.send(checked).is_err() {
            return;
        }
    }
}

/// Validates `lines` on the blocking pool and queues the result, in order; false once the
/// batch has gone away.
async fn validate(app: &Arc<App>, lines: Vec<Line>, validating_tx: &tokio::sync::mpsc::Sender<Validating>) -> bool {
    if lines.is_empty() {
        return true;
    }
    let a = Arc::clone(app);
    let n = lines.len();
    let handle = tokio::task::spawn_blocking(move || {
        lines
            .into_iter()
            .map(|line| match line {
                None => Err(ApiError::BadRequest(format!("a line is longer than {LINE_LIMIT} bytes"))),
                Some(l) => prepare_client(&a, &parse::<ClientTokenRequest>(&l)?),
            })
            .collect::<Checked>()
    });
    validating_tx.send((handle, n)).await.is_ok()
}

/// The submitter: validated lines → pipeline in groups (waiting for room: backpressure), in order.
async fn submit(
    app: Arc<App>,
    requester: Requester,
    mut checked_rx: tokio::sync::mpsc::UnboundedReceiver<Checked>,
    slot_tx: tokio::sync::mpsc::UnboundedSender<Slot>,
) {
    // Consecutive good lines go to the workers in groups; a bad line keeps its place.
    let mut group: Vec<Item> = Vec::with_capacity(GROUP);
    while let Some(checked) = checked_rx.recv().await {
        for item in checked {
            match item {
                Ok(ok) => {
                    group.push(ok);
                    if group.len() == GROUP && !flush(&app, &requester, &mut group, &slot_tx).await {
                        return;
                    }
                }
                Err(e) => {
                    if !flush(&app, &requester, &mut group, &slot_tx).await || slot_tx.send(Slot::Failed(e)).is_err() {
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
    slot_tx: &tokio::sync::mpsc::UnboundedSender<Slot>,
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
    slots.into_iter().all(|slot| slot_tx.send(slot).is_ok())
}

/// The writer: awaits each slot in order and streams its lines; the lines the connection takes
/// move the window.
async fn write(
    app: Arc<App>,
    window: Arc<Window>,
    mut slot_rx: tokio::sync::mpsc::UnboundedReceiver<Slot>,
    out_tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    _slot: Place,
    done: tokio::sync::watch::Sender<bool>,
) {
    let mut items = 0u64;
    let mut pending = 0u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        // The client may go away while nothing is ready: the batch ends then, not later.
        let slot = tokio::select! {
            slot = slot_rx.recv() => slot,
            () = out_tx.closed() => None,
        };
        let Some(slot) = slot else { break };
        let lines: Vec<Value> = match slot {
            Slot::Group(mut t, n) => {
                // Answers ready go to the client before we wait for a group still signing.
                let ready = if buf.is_empty() { None } else { futures_util::FutureExt::now_or_never(&mut t) };
                let result = match ready {
                    Some(result) => result,
                    None => {
                        if !buf.is_empty() {
                            let lines = std::mem::take(&mut pending);
                            if !deliver(&window, &out_tx, std::mem::take(&mut buf), lines).await {
                                break;
                            }
                            buf = Vec::with_capacity(64 * 1024);
                        }
                        t.await
                    }
                };
                match result {
                    Ok(results) => results
                        .into_iter()
                        .map(|r| match r {
                            Ok(token) => json!({"token": token.token, "expires": token.expires}),
                            Err(e) => ApiError::from(e).to_json(),
                        })
                        .collect(),
                    Err(_) => vec![ApiError::Unavailable("the service is stopping".into()).to_json(); n],
                }
            }
            Slot::Failed(e) => vec![e.to_json()],
        };
        for line in lines {
            items += 1;
            pending += 1;
            // Serialising a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut buf, &line);
            buf.push(b'\n');
        }
        // Flush when nothing more is ready, or the buffer is large.
        if slot_rx.is_empty() || buf.len() > 48 * 1024 {
            if !deliver(&window, &out_tx, std::mem::take(&mut buf), std::mem::take(&mut pending)).await {
                break;
            }
            buf = Vec::with_capacity(64 * 1024);
        }
    }
    if !buf.is_empty() {
        deliver(&window, &out_tx, buf, pending).await;
    }
    window.close();
    app.metrics.batch_size.observe(items as f64);
    let _ = done.send(true);
}

/// Hands `lines` answers to the connection, noting how long it keeps the writer waiting; false
/// once the client has gone away.
async fn deliver(
    window: &Window,
    out_tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    lines: u64,
) -> bool {
    let permit = match out_tx.try_reserve() {
        Ok(permit) => permit,
        Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => return false,
        Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {
            window.waiting(Some(tokio::time::Instant::now()));
            let permit = out_tx.reserve().await;
            window.waiting(None);
            match permit {
                Ok(permit) => permit,
                Err(_) => return false,
            }
        }
    };
    permit.send(Ok(Bytes::from(buf)));
    window.delivered(lines);
    true
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
