//! How the CLI runs an admin operation: through the running service's admin socket when there is
//! one (the service owns the devices; a TPM serves one client at a time), otherwise directly on
//! the devices and store. Both run the same `sitesign::admin::execute`.
//!
//! Wire format on the socket: one JSON request per line (`AdminRequest`), one JSON answer per
//! line: `{"ok":…}` or `{"error":{"code","message"}}`.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;
use sitesign::admin::{self, AdminContext, AdminRequest};
use sitesign::pki;

use crate::CliError;
use crate::context::{Context, actor};

/// Runs `request`; returns the answer's JSON.
pub fn call(ctx: &Context, request: &AdminRequest) -> Result<Value, CliError> {
    let socket = &ctx.config.service.admin_socket;
    match UnixStream::connect(socket) {
        Ok(stream) => over_socket(stream, request),
        // No service: work on the devices directly.
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => local(ctx, request),
        Err(e) => Err(CliError::new(
            "admin_socket",
            format!(
                "cannot use the service's admin socket {}: {e} (only the configured admin users and group may)",
                socket.display()
            ),
        )),
    }
}

fn local(ctx: &Context, request: &AdminRequest) -> Result<Value, CliError> {
    let mut store = ctx.store()?;
    let backends = ctx.backends()?;
    let audit = ctx.audit()?;
    let mut admin_ctx = AdminContext { config: &ctx.config, store: &mut store, backends: &backends, audit: &audit };
    Ok(admin::execute(&mut admin_ctx, request, &actor(), pki::now_unix())?)
}

fn over_socket(stream: UnixStream, request: &AdminRequest) -> Result<Value, CliError> {
    let io = |e: std::io::Error| CliError::new("admin_socket", format!("admin socket: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|e| CliError::new("encoding", e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    let v: Value = serde_json::from_str(&answer).map_err(|_| {
        CliError::new("admin_socket", "the service closed the admin socket without an answer (see its log)")
    })?;
    if let Some(err) = v.get("error") {
        let code = err["code"].as_str().unwrap_or("admin_socket").to_owned();
        return Err(CliError::new_owned(code, err["message"].as_str().unwrap_or_default().to_owned()));
    }
    Ok(v["ok"].clone())
}
