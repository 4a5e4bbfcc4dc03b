"""HTTP/2 probes against sitesignd's mTLS listener, frame by frame (the `h2` state machine, no
client library in between).

    python h2probe.py COMMAND HOST PORT CA CERT KEY

settings  the server's SETTINGS                → {"alpn", "max_concurrent_streams", "max_header_list_size"}
idle      open a connection, send nothing      → {"closed_after": s, "goaway": bool}
stall     POST headers, then no body           → {"status", "after": s, "code"}
large     POST a 20 KiB JSON body              → {"status", "code"}
starve    a batch stream sent as far as flow control lets it, its answers never read, then a
          single POST /v1/client-tokens on the same connection → {"sent", "status", "after": s}
nopreface TLS with ALPN h2, then nothing at all    → {"alpn", "closed_after": s}
zerowindow  SETTINGS_INITIAL_WINDOW_SIZE 0 and GET /healthz, then only read raw bytes
                                               → {"closed_after": s}
streams   open N+4 streams at once (N = the server's limit), each a POST with no body
                                               → {"limit", "opened", "refused" (REFUSED_STREAM resets)}
"""
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

command, host, port, ca, cert, key = sys.argv[1:7]
tls = ssl.create_default_context(cafile=ca)
tls.load_cert_chain(cert, key)
tls.set_alpn_protocols(["h2"])
sock = tls.wrap_socket(socket.create_connection((host, int(port))), server_hostname=host)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
conn.initiate_connection()
if command != "nopreface":
    sock.sendall(conn.data_to_send())
remote = {}
closed_by_peer = []


def pump(timeout):
    """Events until `timeout` seconds pass with nothing to read; None once the peer closed."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except (socket.timeout, TimeoutError):
        return []
    except (ConnectionResetError, ssl.SSLError):
        return None
    if not data:
        return None
    try:
        events = conn.receive_data(data)
    except h2.exceptions.ProtocolError:
        # A frame after the connection ended: it is over. A GOAWAY read in the same chunk left
        # the state machine closed.
        closed_by_peer.append(conn.state_machine.state == h2.connection.ConnectionState.CLOSED)
        return None
    for e in events:
        if isinstance(e, h2.events.RemoteSettingsChanged):
            remote.update({k: v.new_value for k, v in e.changed_settings.items()})
    out = conn.data_to_send()
    if out:
        sock.sendall(out)
    return events


def post(headers_only, body=b""):
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":authority", host), (":path", "/v1/client-tokens"), ("content-type", "application/json")], end_stream=False)
    if not headers_only:
        for i in range(0, len(body), 16384):
            conn.send_data(sid, body[i : i + 16384])
        conn.end_stream(sid)
    sock.sendall(conn.data_to_send())
    return sid


def answer(sid, patience):
    """(status, error code) of stream `sid`, waiting at most `patience` seconds."""
    status, data, started = None, b"", time.monotonic()
    while time.monotonic() - started < patience:
        events = pump(1)
        if events is None:
            break
        for e in events:
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                status = int(dict(e.headers)[":status"])
            elif isinstance(e, h2.events.DataReceived) and e.stream_id == sid:
                data += e.data
                conn.acknowledge_received_data(e.flow_controlled_length, sid)
            elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == sid:
                code = json.loads(data)["error"]["code"] if data else None
                return status, code
    return status, None


def closed_within(patience):
    """Seconds until the server closes the connection (read without taking part in HTTP/2)."""
    started = time.monotonic()
    sock.settimeout(1)
    while time.monotonic() - started < patience:
        try:
            if not sock.recv(65536):
                break
        except (socket.timeout, TimeoutError):
            continue
        except (ConnectionResetError, ssl.SSLError, OSError):
            break
    return round(time.monotonic() - started, 1)


if command == "nopreface":
    # TLS done with ALPN h2, then not even the connection preface.
    print(json.dumps({"alpn": sock.selected_alpn_protocol(), "closed_after": closed_within(120)}))
    sys.exit(0)
if command == "zerowindow":
    # A client that gives the server no room to send (initial window 0) and asks for /healthz.
    from h2.settings import SettingCodes

    conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", host), (":path", "/healthz")], end_stream=True)
    sock.sendall(conn.data_to_send())
    print(json.dumps({"closed_after": closed_within(120)}))
    sys.exit(0)
pump(2)
alpn = sock.selected_alpn_protocol()
if command == "settings":
    from h2.settings import SettingCodes

    print(json.dumps({"alpn": alpn, "max_concurrent_streams": remote.get(SettingCodes.MAX_CONCURRENT_STREAMS), "max_header_list_size": remote.get(SettingCodes.MAX_HEADER_LIST_SIZE)}))
elif command == "idle":
    started, goaway = time.monotonic(), False
    while time.monotonic() - started < 120:
        events = pump(1)
        if events is None:
            break
        goaway = goaway or any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    goaway = goaway or any(closed_by_peer)
    print(json.dumps({"closed_after": round(time.monotonic() - started, 1), "goaway": goaway}))
elif command == "stall":
    started = time.monotonic()
    status, code = answer(post(True), 120)
    print(json.dumps({"status": status, "after": round(time.monotonic() - started, 1), "code": code}))
elif command == "large":
    status, code = answer(post(False, b'{"token":"' + b"x" * 20480 + b'"}'), 60)
    print(json.dumps({"status": status, "code": code}))
elif command == "starve":
    thumb = "q1MKE5hX1uWoOlxMqk1B7v4HnpnZz3jOhP1ZbpQ6sGA"
    line = lambda i: json.dumps({"device_id": f"GUID:{i:08X}-0000-4000-8000-000000000000", "client_cert_thumbprint": thumb, "proof": {"kind": "internal"}}).encode() + b"\n"
    body = b"".join(line(i) for i in range(20000))
    batch = conn.get_next_available_stream_id()
    conn.send_headers(batch, [(":method", "POST"), (":scheme", "https"), (":authority", host), (":path", "/v1/client-tokens:batch"), ("content-type", "application/x-ndjson")])
    sent = 0
    # As much as flow control allows, in rounds (the server's reads reopen the window), for 0.5 s;
    # the batch's answers are never acknowledged, so it stalls on our side.
    started = time.monotonic()
    while time.monotonic() - started < 0.5 and sent < len(body):
        room = min(conn.local_flow_control_window(batch), conn.max_outbound_frame_size, len(body) - sent)
        if room > 0:
            conn.send_data(batch, body[sent : sent + room])
            sent += room
            sock.sendall(conn.data_to_send())
        elif pump(0.2) is None:
            break
    single = conn.get_next_available_stream_id()
    request = json.dumps({"device_id": "GUID:0000FFFF-0000-4000-8000-000000000000", "client_cert_thumbprint": thumb, "proof": {"kind": "internal"}}).encode()
    conn.send_headers(single, [(":method", "POST"), (":scheme", "https"), (":authority", host), (":path", "/v1/client-tokens"), ("content-type", "application/json")])
    sock.sendall(conn.data_to_send())
    started, status, body_sent = time.monotonic(), None, False
    while status is None and time.monotonic() - started < 30:
        # The request's body goes once the connection's window has room for it.
        if not body_sent and conn.local_flow_control_window(single) >= len(request):
            conn.send_data(single, request, end_stream=True)
            sock.sendall(conn.data_to_send())
            body_sent = True
        events = pump(0.5)
        if events is None:
            break
        for e in events:
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == single:
                status = int(dict(e.headers)[":status"])
    print(json.dumps({"sent": sent, "status": status, "after": round(time.monotonic() - started, 2)}))
elif command == "streams":
    import collections

    from h2.errors import ErrorCodes
    from h2.settings import SettingCodes

    limit = remote.get(SettingCodes.MAX_CONCURRENT_STREAMS)
    # Our side would refuse to open more than the server allows: lift that, so that the server's
    # own enforcement is what is tested. Each stream is a POST whose body never comes.
    conn.remote_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque([10_000])
    for _ in range(limit + 4):
        post(True)
    refused, started = 0, time.monotonic()
    while time.monotonic() - started < 3:
        events = pump(0.5)
        if events is None:
            break
        refused += sum(1 for e in events if isinstance(e, h2.events.StreamReset) and e.error_code == ErrorCodes.REFUSED_STREAM)
    print(json.dumps({"limit": limit, "opened": limit + 4, "refused": refused}))
