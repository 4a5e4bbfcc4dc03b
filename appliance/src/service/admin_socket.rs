//! The admin socket: a Unix socket (never TCP) for the CLI's admin commands — bulk tokens,
//! block/unblock, role-certificate issuance. Each connection's peer is checked with SO_PEERCRED:
//! only the configured admin uids (default: the service's own) or the admin group may use it.
//! One JSON request per line, one JSON answer per line (see the CLI's `admin_client`).

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::App;
use crate::admin::{self, AdminContext, AdminRequest};
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

/// Whether a peer (uid, gid) may administer.
pub fn allowed(service: &ServiceConfig, uid: u32, gid: u32) -> bool {
    let own = rustix::process::geteuid().as_raw();
    let uids_ok = if service.admin_uids.is_empty() { uid == own } else { service.admin_uids.contains(&uid) };
    uids_ok || service.admin_gid == Some(gid)
}

/// Serves admin connections until `stop`.
pub async fn serve(
    listener: UnixListener,
    app: Arc<App>,
    service: ServiceConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let (app, service) = (Arc::clone(&app), service.clone());
        tokio::spawn(async move { connection(stream, app, &service).await });
    }
}

async fn connection(stream: UnixStream, app: Arc<App>, service: &ServiceConfig) {
    let creds = rustix::net::sockopt::socket_peercred(&stream);
    let (mut reader, mut writer) = {
        let (r, w) = stream.into_split();
        (BufReader::new(r), w)
    };
    let answer = |v: Value| {
        let mut line = v.to_string();
        line.push('\n');
        line
    };
    let mut line = String::new();
    // One request line, at most 64 KiB, within 30 s — read before any answer, so a refused client
    // gets its answer rather than a reset connection.
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut limited = (&mut reader).take(64 * 1024);
        limited.read_line(&mut line).await
    })
    .await;
    let (uid, gid) = match creds {
        Ok(c) => (c.uid.as_raw(), c.gid.as_raw()),
        Err(e) => {
            let _ = writer
                .write_all(
                    answer(
                        json!({"error": {"code": "admin_forbidden", "message": format!("no peer credentials: {e}")}}),
                    )
                    .as_bytes(),
                )
                .await;
            return;
        }
    };
    if !allowed(service, uid, gid) {
        tracing::warn!(uid, gid, "admin socket: refused a peer that is not an admin");
        let msg = format!("uid {uid} (gid {gid}) may not administer this appliance; ask for the admin group");
        let _ =
            writer.write_all(answer(json!({"error": {"code": "admin_forbidden", "message": msg}})).as_bytes()).await;
        return;
    }
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    let reply = match serde_json::from_str::<AdminRequest>(&line) {
        Err(e) => json!({"error": {"code": "bad_request", "message": format!("not an admin request: {e}")}}),
        Ok(request) => {
            let actor = format!("admin:uid={uid}");
            let app = Arc::clone(&app);
            let done = tokio::task::spawn_blocking(move || {
                let mut store = app.store();
                let mut ctx =
                    AdminContext { config: &app.config, store: &mut store, backends: &app.backends, audit: &app.audit };
                admin::execute(&mut ctx, &request, &actor, crate::pki::now_unix())
            })
            .await;
            match done {
                Ok(Ok(v)) => json!({"ok": v}),
                Ok(Err(e)) => json!({"error": {"code": e.code(), "message": e.to_string()}}),
                Err(e) => json!({"error": {"code": "internal", "message": e.to_string()}}),
            }
        }
    };
    let _ = writer.write_all(answer(reply).as_bytes()).await;
}
