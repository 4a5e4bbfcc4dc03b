#!/usr/bin/env python3
"""Regenerates fuzz/data/ and the seed corpora fuzz/corpus/<target>/ from sitesign's test vectors.

Run from anywhere with a Python that has `cryptography` (scripts/install-deps puts one in
target/pytools):

    target/pytools/bin/python fuzz/seeds.py

The vectors: the two published ConfigMgr bulk tokens (SPEC, reference/vectors.md), the RSA key of
RFC 7520 §3.4 (softhsm-tests/data, as the unit tests use it), the P-256 key of RFC 7515 A.3, the
RFC 7512 URI examples, sitesign.sample.toml and the inputs of the crates' unit tests. The
corpora are rewritten; the certificates in data/ are made only if missing (delete them to make
new ones — every token names its certificate by thumbprint, so the corpora then change too).
The constants below are also in fuzz_targets/token_verifier.rs; change them in both places.
"""

import base64
import datetime
import hashlib
import hmac
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)

# Shared with fuzz_targets/token_verifier.rs.
NOW = 1_580_160_000  # an hour after the docs sample's nbf: its claims are current
HIERARCHY = "CDCC5E91-0ADF-4A24-82D0-196667F1C081"  # the docs sample's TenantId
CLIENT_CERT = "q1MKE5hX1uWoOlxMqk1B7v4HnpnZz3jOhP1ZbpQ6sGA"  # x5t#S256 the target presents
DEVICE = "GUID:8D2B7C6E-1F3A-4B5C-9D8E-7F6A5B4C3D2E"
DAY = 86_400

# reference/vectors.md: the docs sample (A) and the blog sample (B), signatures included.
SAMPLE_A = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsIng1dCI6Ik9Tbzh2Tmd5VldRUjlDYVh5T2lacHFlMDlXNCJ9."
    "eyJTQ0NNVG9rZW5DYXRlZ29yeSI6IlNDQ01QcmVBdXRoVG9rZW4iLCJBdXRob3JpdHkiOiJTQ0NNIiwiTGljZW5zZSI6IlNDQ00iLCJUeXBlIjoiQnVsa1JlZ2lzdHJhdGlvbiIsIlRlbmFudElkIjoiQ0RDQzVFOTEtMEFERi00QTI0LTgyRDAtMTk2NjY3RjFDMDgxIiwiVW5pcXVlSWQiOiJkYjU5MWUzMy0wNmZkLTRjNWItODJmMy1iZjY3M2U1YmQwYTIiLCJpc3MiOiJ1cm46c2NjbTpvYXV0aDI6Y2RjYzVlOTEtMGFkZi00YTI0LTgyZDAtMTk2NjY3ZjFjMDgxIiwiYXVkIjoidXJuOnNjY206c2VydmljZSIsImV4cCI6MTU4MDQxNTUwNSwibmJmIjoxNTgwMTU2MzA1fQ."
    "ZUJkxCX6lxHUZhMH_WhYXFm_tbXenESpgnbIqI1h8hYIJw7xDk3wv625SCfNfsqxhAwRwJByfkXdVGgIpAcFshzArXUVPPvmiUGaxlbB83etUTQjrLIk-gvQQZiE5NSgJ63LCp5KtqFCZe8vlZxnOloErFIrebjFikxqAgwOO4i5ukJdl3KQ07YPRhwpuXmwxRf1vsiawXBvTMhy40SOeZ3mAyCRypQpQNa7NM3adCBwUtYKwHqiX3a1jQU0y57LvU_brBfLUL6JUpk3ri-LSpwPFarRXzZPJUu4-mQFIgrMmKCYbFk3AaEvvrJienfWSvFYLpIYA7lg-6EVYRcCAA"
)
SAMPLE_B = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsIng1dCI6Ik1XUldSbUtVQlZjNlJDSGpCTjQyZnhvZUdEMCJ9."
    "eyJTQ0NNVG9rZW5DYXRlZ29yeSI6IlNDQ01QcmVBdXRoVG9rZW4iLCJBdXRob3JpdHkiOiJTQ0NNIiwiTGljZW5zZSI6IlNDQ00iLCJUeXBlIjoiQnVsa1JlZ2lzdHJhdGlvbiIsIlRlbmFudElkIjoiN0IwQzM4MDYtRDI4Qy00QTQ1LUFEQjItRkI5Rjk0QTQ2MkY4IiwiVW5pcXVlSWQiOiJlYTJmYzUxMC1hM2JlLTRjZWYtOTBiMC0yYTA1MTVjNGU0MGMiLCJpc3MiOiJ1cm46c2NjbTpvYXV0aDI6N2IwYzM4MDYtZDI4Yy00YTQ1LWFkYjItZmI5Zjk0YTQ2MmY4IiwiYXVkIjoidXJuOnNjY206c2VydmljZSIsImV4cCI6MTU4OTcwMTUxOCwibmJmIjoxNTg5NDQyMzE4fQ."
    "Y-6s6_h18cnIZP8OPqdjpxQHUhg_4srICehX5xOfym5AcyQRC3wlN89PAByFD2gfp6QvV7gXX9H7oG198UGHhUuJrthAipSo4KNCSr8t7TcZwjR9awt720tErf9aiflBKnFibAYAGU9xBS3UYTetQ6XYpdh0XsCedsbh0-6ilj6KmP1qWBFIYNkBaL3oP_HJhX02de0wqeh-fWiTtdvbKnOxDrGetoCKsEVp3sJumprzWHZ6ZpRD3powG3AUOOSbAW96c_driDvzwC6x6hoWOo4GPEs-BaoJUdRzi1htY9IJB2X_drIQqLH8X0Ps6B5H5-KGH3gB0tJA45WwERuLxA"
)

# RFC 7515 A.3: the ES256 example key.
EC_D = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


RSA_KEY = serialization.load_pem_private_key(
    open(os.path.join(ROOT, "softhsm-tests/data/rfc7520-rsa-key.pem"), "rb").read(), password=None
)
EC_KEY = ec.derive_private_key(int.from_bytes(unb64(EC_D), "big"), ec.SECP256R1())


def certificate(key, cn: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sitesign fuzz")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(cn.encode()).digest()[:16], "big") >> 1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
        .not_valid_after(datetime.datetime(2050, 1, 1, tzinfo=datetime.timezone.utc))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def certificate_file(name: str, key, cn: str) -> bytes:
    """fuzz/data/NAME, made if missing. Kept otherwise: corpora grown by earlier runs
    (target/fuzz-corpus) name these certificates by thumbprint."""
    path = os.path.join(FUZZ, "data", name)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(certificate(key, cn))
    with open(path, "rb") as f:
        return f.read()


def x5t(der: bytes) -> str:
    return b64(hashlib.sha1(der).digest())


def rs256(message: bytes) -> bytes:
    return RSA_KEY.sign(message, padding.PKCS1v15(), hashes.SHA256())


def es256(message: bytes, high_s: bool = False) -> bytes:
    r, s = decode_dss_signature(EC_KEY.sign(message, ec.ECDSA(hashes.SHA256())))
    if (s > P256_N // 2) != high_s:
        s = P256_N - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def header(alg: str, thumbprint: str) -> str:
    return compact({"typ": "JWT", "alg": alg, "x5t": thumbprint})


def bulk_claims(unique="db591e33-06fd-4c5b-82f3-bf673e5bd0a2", nbf=1580156305, exp=1580415505) -> str:
    return compact({
        "SCCMTokenCategory": "SCCMPreAuthToken", "Authority": "SCCM", "License": "SCCM",
        "Type": "BulkRegistration", "TenantId": HIERARCHY, "UniqueId": unique,
        "iss": "urn:sccm:oauth2:" + HIERARCHY.lower(), "aud": "urn:sccm:service", "exp": exp, "nbf": nbf,
    })


def client_claims(iat=NOW - 60) -> str:
    return compact({
        "SCCMTokenCategory": "SCCMClientToken", "Authority": "SCCM", "License": "SCCM", "Type": "Device",
        "TenantId": HIERARCHY, "UniqueId": "5f0c3a52-9b1e-4d7a-8c2f-6e4d3b2a1f09", "DeviceId": DEVICE,
        "cnf": {"x5t#S256": CLIENT_CERT}, "iss": "urn:sccm:oauth2:" + HIERARCHY.lower(),
        "aud": "urn:sccm:service", "iat": iat, "nbf": iat, "exp": iat + 90 * DAY,
    })


def access_claims(iat=NOW - 60) -> str:
    return compact({
        "SCCMTokenCategory": "SCCMAccessToken", "Type": "Device", "DeviceId": DEVICE,
        "cnf": {"x5t#S256": CLIENT_CERT}, "UniqueId": "5f0c3a52-9b1e-4d7a-8c2f-6e4d3b2a1f09",
        "iss": "urn:sccm:oauth2:" + HIERARCHY.lower(), "aud": "urn:sccm:service",
        "iat": iat, "nbf": iat, "exp": iat + 8 * 3600,
    })


def sign_token(hdr: str, claims: str, signer) -> str:
    signing_input = b64(hdr.encode()) + "." + b64(claims.encode())
    return signing_input + "." + b64(signer(signing_input.encode()))


# The token_verifier input: flags, time offset from NOW, body (see the target's doc comment).
FORGED, RENEWAL, THUMBPRINT, HIGH_S_BEFORE = 1, 2, 16, 32
EXPECT = {None: 0, "bulk": 4, "client": 8, "access": 12}


def verifier_input(flags: int, offset: int, body: bytes) -> bytes:
    return bytes([flags]) + struct.pack("<i", offset) + body


def write(target: str, name: str, data) -> None:
    if isinstance(data, str):
        data = data.encode()
    folder = os.path.join(FUZZ, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def der_info(csr_der: bytes) -> bytes:
    """The CertificationRequestInfo (the signed part) of a DER CSR."""
    return x509.load_der_x509_csr(csr_der).tbs_certrequest_bytes


def csr(key, cn, names=(), ips=()) -> bytes:
    builder = x509.CertificateSigningRequestBuilder()
    if cn is not None:
        builder = builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    else:
        builder = builder.subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Contoso")]))
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(__import__("ipaddress").ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def main() -> None:
    shutil.rmtree(os.path.join(FUZZ, "corpus"), ignore_errors=True)
    rsa_cert = certificate_file("token-signing-rsa.der", RSA_KEY, "SMS Token Signing")
    revoked_cert = certificate_file("token-signing-rsa-revoked.der", RSA_KEY, "SMS Token Signing (revoked)")
    ec_cert = certificate_file("token-signing-ec.der", EC_KEY, "SMS Token Signing (ES256)")
    rsa, revoked, ecx = x5t(rsa_cert), x5t(revoked_cert), x5t(ec_cert)

    # ---- token_verifier
    t = "token_verifier"
    sample_b_offset = 1589442318 + 3600 - NOW
    write(t, "sample-a", verifier_input(0, 0, SAMPLE_A.encode()))
    write(t, "sample-b", verifier_input(0, sample_b_offset, SAMPLE_B.encode()))
    write(t, "bulk-rs256", verifier_input(EXPECT["bulk"], 0, sign_token(header("RS256", rsa), bulk_claims(), rs256).encode()))
    write(t, "bulk-rs256-revoked-renewal",
          verifier_input(RENEWAL, 0, sign_token(header("RS256", revoked), bulk_claims(), rs256).encode()))
    write(t, "bulk-es256", verifier_input(0, 0, sign_token(header("ES256", ecx), bulk_claims(), es256).encode()))
    high = sign_token(header("ES256", ecx), bulk_claims(), lambda m: es256(m, high_s=True))
    write(t, "bulk-es256-high-s", verifier_input(HIGH_S_BEFORE, 0, high.encode()))
    write(t, "client-rs256",
          verifier_input(THUMBPRINT | EXPECT["client"], 0, sign_token(header("RS256", rsa), client_claims(), rs256).encode()))
    write(t, "client-rs256-renewal-late",
          verifier_input(THUMBPRINT | RENEWAL, 60 * DAY, sign_token(header("RS256", rsa), client_claims(), rs256).encode()))
    write(t, "access-es256",
          verifier_input(THUMBPRINT | EXPECT["access"], 0, sign_token(header("ES256", ecx), access_claims(), es256).encode()))
    unsigned = b64(header("none", rsa).encode()) + "." + b64(bulk_claims().encode())
    write(t, "alg-none", verifier_input(0, 0, (unsigned + ".").encode()))
    hs_input = b64(header("HS256", rsa).encode()) + "." + b64(bulk_claims().encode())
    tag = hmac.new(rsa_cert, hs_input.encode(), hashlib.sha256).digest()
    write(t, "alg-hs256-certificate-as-secret", verifier_input(0, 0, (hs_input + "." + b64(tag)).encode()))
    # Forged: header NUL claims, signed by the target with the EC key.
    forged = [
        ("bulk", 0, header("ES256", ecx), bulk_claims()),
        ("client", THUMBPRINT, header("ES256", ecx), client_claims()),
        ("access", THUMBPRINT | EXPECT["access"], header("ES256", ecx), access_claims()),
        ("sample-b-claims", 0, header("ES256", ecx), unb64(SAMPLE_B.split(".")[1]).decode()),
        ("dup-header", 0, '{"typ":"JWT","alg":"ES256","alg":"none","x5t":"%s"}' % ecx, bulk_claims()),
        ("crit", 0, '{"typ":"JWT","alg":"ES256","x5t":"%s","crit":["exp"]}' % ecx, bulk_claims()),
        ("jwk", 0, '{"typ":"JWT","alg":"ES256","x5t":"%s","jwk":{"kty":"EC"}}' % ecx, bulk_claims()),
        ("kid", 0, '{"typ":"JWT","alg":"ES256","x5t":"%s","kid":"../../etc/passwd"}' % ecx, bulk_claims()),
        ("typ", 0, '{"typ":"at+jwt","alg":"ES256","x5t":"%s"}' % ecx, bulk_claims()),
        ("rs-header-es-key", 0, header("RS256", ecx), bulk_claims()),
        ("dup-claim", 0, header("ES256", ecx), bulk_claims().replace('"aud":', '"exp":99999999999,"aud":')),
        ("dup-cnf", THUMBPRINT, header("ES256", ecx),
         client_claims().replace('{"x5t#S256":', '{"x5t#S256":"a","x5t#S256":')),
        ("exp-float", 0, header("ES256", ecx), bulk_claims().replace('"exp":1580415505', '"exp":1580415505.5')),
        ("exp-string", 0, header("ES256", ecx), bulk_claims().replace('"exp":1580415505', '"exp":"1580415505"')),
        ("exp-negative", 0, header("ES256", ecx), bulk_claims().replace('"exp":1580415505', '"exp":-5')),
        ("unknown-claim", 0, header("ES256", ecx), bulk_claims().replace('"aud":', '"admin":true,"aud":')),
        ("missing-claim", 0, header("ES256", ecx), bulk_claims().replace('"License":"SCCM",', "")),
        ("blocked", 0, header("ES256", ecx), bulk_claims(unique="ea2fc510-a3be-4cef-90b0-2a0515c4e40c")),
        ("registry-down", 0, header("ES256", ecx), bulk_claims(unique="00000000-0000-0000-0000-000000000000")),
        ("too-long", 0, header("ES256", ecx), bulk_claims(exp=1580156305 + 10081 * 60)),
        # Regressions: crashes found, kept so that every run replays them.
        ("regression-exp-near-i64-max", 0, header("ES256", ecx), bulk_claims(nbf=2**63 - 808, exp=2**63 - 1)),
    ]
    for name, flags, hdr, claims in forged:
        write(t, "forged-" + name, verifier_input(FORGED | flags, 0, hdr.encode() + b"\0" + claims.encode()))

    # ---- strict_json: the parts of the tokens above, and json.rs's unit-test inputs.
    t = "strict_json"
    for i, part in enumerate([SAMPLE_A.split(".")[0], SAMPLE_A.split(".")[1], SAMPLE_B.split(".")[1]]):
        write(t, f"sample-part-{i}", unb64(part))
    for name, text in [
        ("client", client_claims()), ("access", access_claims()), ("nested", '{"b":1,"a":{"x":[1,{"y":2}]},"c":"s"}'),
        ("dup", '{"alg":"RS256","alg":"none"}'), ("dup-nested", '{"cnf":{"x5t#S256":"a","x5t#S256":"b"}}'),
        ("dup-escaped", '{"alg":1,"\\u0061lg":2}'), ("trailing", "{} {}"), ("array", "[1]"),
        ("numbers", '{"a":-0,"b":1e400,"c":18446744073709551615,"d":-9223372036854775808,"e":0.1}'),
        ("strings", '{"\\ud83d\\ude00":"\\u0000","":"\\/"}'),
    ]:
        write(t, name, text)

    # ---- ndjson_batch: batch bodies (0xFF: a chunk boundary; 0xFE n: n × 64 bytes of 'x').
    t = "ndjson_batch"
    internal = compact({"device_id": DEVICE, "client_cert_thumbprint": CLIENT_CERT, "proof": {"kind": "internal"}})
    bulk = compact({"device_id": DEVICE, "client_cert_thumbprint": CLIENT_CERT, "proof": {"kind": "bulk", "token": SAMPLE_A}})
    renew = compact({"device_id": DEVICE, "client_cert_thumbprint": CLIENT_CERT,
                     "proof": {"kind": "renew", "token": sign_token(header("RS256", rsa), client_claims(), rs256)}})
    write(t, "three-lines", (internal + "\n" + bulk + "\n" + renew + "\n").encode())
    write(t, "chunked", internal.encode()[:40] + b"\xff" + internal.encode()[40:] + b"\n\n  \r\n\xff" + bulk.encode())
    write(t, "crlf-and-blank", ("\r\n" + internal + "\r\n\t\n" + internal).encode())
    write(t, "long-line", b"a\n\xfe\xff\xfe\x02\nb\n")  # 16,448 bytes: over the limit
    write(t, "exact-limit", b"\xfe\xff" + b"y" * 64 + b"\n" + internal.encode())  # 16,384 bytes: allowed
    write(t, "bad-lines", b'{"device_id":1}\n{"proof":{"kind":"internal","x":1}}\n[]\nnot json\n\xc3\x28\n')
    write(t, "unknown-field", ('{"device_id":"GUID:x","client_cert_thumbprint":"y","proof":{"kind":"internal"},"' + "\u00e9" * 300 + '":1}\n').encode())

    # ---- csr: flag byte 0 = the bytes as sent, 1 = a CertificationRequestInfo the target signs.
    t = "csr"
    mp = csr(RSA_KEY, "mp1.contoso.com", names=["mp1.contoso.com"])
    write(t, "rsa-mp-client.der", b"\0" + mp)
    write(t, "rsa-mp-client.pem", b"\0" + x509.load_der_x509_csr(mp).public_bytes(serialization.Encoding.PEM))
    role = csr(EC_KEY, "cm01.contoso.com", names=["cm01.contoso.com", "cm01"], ips=["10.0.0.7", "fd00::7"])
    write(t, "ec-role-ssl.der", b"\0" + role)
    write(t, "ec-role-ssl-info", b"\1" + der_info(role))
    write(t, "ec-no-cn-info", b"\1" + der_info(csr(EC_KEY, None, names=["*.contoso.com"])))
    write(t, "ec-no-san-info", b"\1" + der_info(csr(EC_KEY, "mp1")))
    email = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mp1")])
    ).add_extension(x509.SubjectAlternativeName([x509.RFC822Name("a@contoso.com")]), critical=False).sign(
        EC_KEY, hashes.SHA256()
    ).public_bytes(serialization.Encoding.DER)
    write(t, "ec-email-san-info", b"\1" + der_info(email))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "req.der")
        # The CSR a management point would make with the openssl tool (a fresh key: raw mode).
        subprocess.run(
            ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", os.path.join(tmp, "key.pem"), "-subj", "/CN=mp1", "-outform", "DER", "-out", out],
            check=True, capture_output=True,
        )
        write(t, "openssl-ec.der", b"\0" + open(out, "rb").read())
    write(t, "garbage-pem", b"\0-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    write(t, "garbage-der", b"\0\x30\x03\x02\x01\x00")

    # ---- config: the sample and the config unit tests' inputs.
    t = "config"
    write(t, "sample.toml", open(os.path.join(ROOT, "sitesign.sample.toml"), "rb").read())
    write(t, "tpm.toml", 'state_dir = "/var/lib/sitesign"\n[backends.tpm]\nkind = "tpm"\ntcti = "swtpm:host=127.0.0.1,port=2321"\n'
          'key_dir = "/var/lib/sitesign/tpm"\nauth_file = "/etc/sitesign/tpm.auth"\nqueue_depth = 8\n'
          '[pki]\nissuing_backend = "tpm"\ntoken_signing_algorithm = "ec-p256"\ntls_names = ["localhost", "::1"]\n'
          'hierarchy_id = "cdcc5e91-0adf-4a24-82d0-196667f1c081"\n')
    write(t, "bad-tpm.toml", '[backends.tpm]\nkind = "tpm"\ntcti = "serial:/dev/ttyS0"\nparent_handle = "0x01000001"\n')
    write(t, "bad-name.toml", '[backends."bad name"]\nkind = "pkcs11"\ntoken_label = "t"\npin_file = "/p"\nmodule = "/bin/sh"\n')
    write(t, "environment.toml", 'state_dir = "s"\n[backends.hsm]\nkind = "pkcs11"\nmodule = "/bin/sh"\ntoken_serial = "8f3c"\n'
          'pin_credential = "hsm-pin"\nenvironment = { SOFTHSM2_CONF = "/etc/softhsm2.conf", LD_PRELOAD = "/tmp/x.so" }\n')
    write(t, "service.toml", 'state_dir = "/s"\n[backends.h]\nkind = "tpm"\nkey_dir = "/k"\nempty_auth = true\n'
          '[service]\nlisten = "[::1]:8443"\nops_listen = ""\nlog_format = "json"\nmax_batch_mb = 1048576\n'
          'body_timeout_seconds = 301\n[audit]\nmax_size_mb = 0.5\nanchor_file = "anchor"\n[tokens]\nclock_skew_seconds = 3601\n')
    write(t, "syntax.toml", 'state_dir = "/var/lib/sitesign"\nlisten = 3\n')

    # ---- key_uri: uri.rs's unit-test inputs and the examples of RFC 7512 §3.3.
    t = "key_uri"
    for i, uri in enumerate([
        "pkcs11:token=sitesign;object=ts-2026-11;type=private",
        "pkcs11:token=My%20Token;id=%01%02%ff;object=a%3Bb",
        "tpm:handle=0x81010001", "tpm:object=ts-2026-11", "tpm:handle=0X81010001", "tpm:object=a?auth=1",
        "pkcs11:object=k?pin-value=1234", "pkcs11:object=k?pin-source=file:/tmp/p", "pkcs11:object=k;slot-id=3",
        "pkcs11:object=k;object=j", "pkcs11:object=%zz", "file:object=k",
        "pkcs11:object=my-pubkey;type=public",
        "pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
        "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;"
        "object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=",
        "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin",
        "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
        "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert",
        "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a"
        "?pin-source=|/usr/lib/vendor/libpinsource.so&vendor-bbb=value-b",
        # Regressions: found by the target (a sign taken for a hex digit).
        "pkcs11:token=a%+0b;object=k", "tpm:handle=0x+81010001",
    ]):
        write(t, f"uri-{i:02}", uri)


if __name__ == "__main__":
    sys.exit(main())
