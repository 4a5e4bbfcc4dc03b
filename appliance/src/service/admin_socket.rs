//! The admin socket: a Unix socket (never TCP) for the CLI's admin commands — bulk tokens,
//! block/unblock, role certificates and their revocation, key rotation, retirement and
//! revocation. Each connection's peer is checked with SO_PEERCRED: only the configured admin uids
//! (default: the service's own) or the admin group may use it. One JSON request per line
//! ([`AdminRequest`]), one JSON answer per line: `{"ok":<AdminResponse>}` or
//! `{"error":{"code","message"}}`. After a change the service takes the new state up before it
//! answers, so the CLI's next command already sees it honoured.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::app::App;
use crate::admin::{self, AdminContext, AdminRequest, AdminResponse};
use crate::config::ServiceConfig;

/// Creates the socket (mode 0660, group `admin_gid` if set). A stale socket file is replaced; a
/// live one (another sitesignd) is an error.
pub fn bind(service: &ServiceConfig) -> std::io::Result<UnixListener> {
    let path = &service.admin_socket;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "another sitesignd is serving it"));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = service.admin_gid {
        rustix::fs::chown(path, None, Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    Ok(listener)
}

/// Whether a peer (uid, primary gid) may administer: a configured admin uid (default: the
/// service's own), or a member of the admin group — as its primary group, or listed as a member
/// in `/etc/group` (SO_PEERCRED carries only the primary group).
pub fn allowed(service: &ServiceConfig, uid: u32, gid: u32) -> bool {
    let own = rustix::process::geteuid().as_raw();
    let uids_ok = if service.admin_uids.is_empty() { uid == own } else { service.admin_uids.contains(&uid) };
    uids_ok || service.admin_gid.is_some_and(|admin| admin == gid || in_group_file(uid, admin))
}

/// Whether the user `uid` (by name, from `/etc/passwd`) is listed as a member of group `gid` in
/// `/etc/group`.
fn in_group_file(uid: u32, gid: u32) -> bool {
    let field = |line: &str, n: usize| line.split(':').nth(n).map(str::to_owned);
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else { return false };
    let Some(name) =
        passwd.lines().find(|l| field(l, 2).as_deref() == Some(&uid.to_string())).and_then(|l| field(l, 0))
    else {
        return false;
    };
    let Ok(groups) = std::fs::read_to_string("/etc/group") else { return false };
    groups
        .lines()
        .filter(|l| field(l, 2).as_deref() == Some(&gid.to_string()))
        .any(|l| field(l, 3).is_some_and(|members| members.split(',').any(|m| m.trim() == name)))
}

/// Serves admin connections until `stop`.
pub async fn serve(listener: UnixListener, app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move { connection(stream, app).await });
    }
}

fn error(code: &str, message: impl Into<String>) -> Value {
    json!({"error": {"code": code, "message": message.into()}})
}

async fn connection(stream: UnixStream, app: Arc<App>) {
    let creds = rustix::net::sockopt::socket_peercred(&stream);
    let (mut reader, mut writer) = {
        let (r, w) = stream.into_split();
        (BufReader::new(r), w)
    };
    let mut line = String::new();
    // One request line, at most 64 KiB, within 30 s — read before any answer, so a refused client
    // gets its answer rather than a reset connection.
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut limited = (&mut reader).take(64 * 1024);
        limited.read_line(&mut line).await
    })
    .await;
    let reply = match creds {
        Err(e) => error("admin_forbidden", format!("no peer credentials: {e}")),
        Ok(c) if !allowed(&app.config.service, c.uid.as_raw(), c.gid.as_raw()) => {
            let (uid, gid) = (c.uid.as_raw(), c.gid.as_raw());
            tracing::warn!(uid, gid, "admin socket: refused a peer that is not an admin");
            error(
                "admin_forbidden",
                format!("uid {uid} (gid {gid}) may not administer this appliance; ask for the admin group"),
            )
        }
        Ok(_) if !matches!(read, Ok(Ok(n)) if n > 0) => return,
        Ok(c) => match serde_json::from_str::<AdminRequest>(&line) {
            Err(e) => error("bad_request", format!("not an admin request: {e}")),
            Ok(request) => {
                let actor = format!("admin:uid={}", c.uid.as_raw());
                let app = Arc::clone(&app);
                match tokio::task::spawn_blocking(move || execute(&app, &request, &actor)).await {
                    Ok(v) => v,
                    Err(e) => error("internal", e.to_string()),
                }
            }
        },
    };
    let mut text = reply.to_string();
    text.push('\n');
    let _ = writer.write_all(text.as_bytes()).await;
}

fn admin_context<'a>(app: &'a App, store: &'a mut crate::store::Store, actor: &'a str) -> AdminContext<'a> {
    AdminContext {
        config: &app.config,
        store,
        backends: &app.backends,
        audit: &app.audit,
        actor,
        now: crate::time::now_unix(),
    }
}

/// Runs one admin request on the service's devices, store and audit log, then follows the store
/// so that the change is in effect before the answer goes back.
fn execute(app: &App, request: &AdminRequest, actor: &str) -> Value {
    // A change that takes authority away holds the signing workers off while it is recorded and
    // taken up: no token is signed under the old state after its audit record. If it cannot be
    // taken up, signing stays held until the watcher can (fail closed).
    let hold =
        admin::restricts(request).then(|| app.barrier.write().unwrap_or_else(std::sync::PoisonError::into_inner));
    let result = {
        let mut store = app.store();
        let mut ctx = admin_context(app, &mut store, actor);
        admin::apply(&mut ctx, request)
    };
    if let Err(e) = app.follow_store() {
        tracing::error!(error = %e, "the state changed but could not be taken up; the watcher retries");
        if hold.is_some() {
            app.hold_signing_until_followed();
        }
    }
    drop(hold);
    // The audit head is witnessed (a device signature, an fsync) after the workers go on.
    if let Ok(response) = &result
        && admin::changed(request, response)
    {
        let mut store = app.store();
        admin::witness_head(&mut admin_context(app, &mut store, actor));
    }
    match result {
        Ok(response) => {
            if let AdminResponse::BulkTokenCreated(_) = response {
                app.metrics.token_issued(crate::token::TokenKind::Bulk);
            }
            let op = serde_json::to_value(request).ok().and_then(|v| v["op"].as_str().map(str::to_owned));
            tracing::info!(actor, op = op.as_deref().unwrap_or("?"), "admin request done");
            json!({"ok": response})
        }
        Err(e) => error(e.code(), e.to_string()),
    }
}
