//! How the CLI runs an admin operation: through the running service's admin socket when there is
//! one (the service owns the devices; a TPM serves one client at a time), otherwise directly on
//! the devices and store. Both run the same `sitesign::admin::execute` and answer the same typed
//! [`AdminResponse`].
//!
//! Wire format on the socket: one JSON request per line (`AdminRequest`), one JSON answer per
//! line: `{"ok":<AdminResponse>}` or `{"error":{"code","message"}}`.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::Deserialize;
use sitesign::admin::{self, AdminContext, AdminRequest, AdminResponse};

use crate::context::{Context, actor};
use crate::output::CliError;

/// Runs `request`; returns the answer.
pub fn call(ctx: &Context, request: &AdminRequest) -> Result<AdminResponse, CliError> {
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

fn local(ctx: &Context, request: &AdminRequest) -> Result<AdminResponse, CliError> {
    let mut store = ctx.store()?;
    let backends = ctx.backends()?;
    let audit = ctx.audit()?;
    let actor = actor();
    let mut admin_ctx = AdminContext {
        config: &ctx.config,
        store: &mut store,
        backends: &backends,
        audit: &audit,
        actor: &actor,
        now: sitesign::time::now_unix(),
    };
    Ok(admin::execute(&mut admin_ctx, request)?)
}

/// The service's answer on the socket.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Ok(Box<AdminResponse>),
    Error { code: String, message: String },
}

fn over_socket(stream: UnixStream, request: &AdminRequest) -> Result<AdminResponse, CliError> {
    let io = |e: std::io::Error| CliError::new("admin_socket", format!("admin socket: {e}"));
    // A rotation of the issuing root signs several certificates in the device: allow for it.
    stream.set_read_timeout(Some(Duration::from_secs(300))).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|e| CliError::new("encoding", e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    match serde_json::from_str::<Answer>(&answer) {
        Ok(Answer::Ok(response)) => Ok(*response),
        Ok(Answer::Error { code, message }) => Err(CliError::new_owned(code, message)),
        Err(_) => Err(CliError::new(
            "admin_socket",
            "the service closed the admin socket without an answer it understood (see its log)",
        )),
    }
}

/// The answer of `request` when it must be of one kind; anything else is the service speaking
/// another version.
pub fn unexpected(response: &AdminResponse) -> CliError {
    CliError::new("admin_socket", format!("unexpected answer from the service: {response:?}"))
}
