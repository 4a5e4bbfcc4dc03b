//! `sd_notify`: tells systemd (when it started us with `Type=notify`) that the service is ready,
//! what it is doing, or that it is stopping.

use std::path::Path;

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=…`) to `$NOTIFY_SOCKET`, if set.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let path = Path::new(&path);
    let _ = if let Some(name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), path)
    };
}
