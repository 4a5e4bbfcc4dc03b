#!/usr/bin/env python3
"""Verifies a JWS compact token (read from standard input) with two third-party JOSE
implementations, PyJWT and jwcrypto, against the public key of a PEM certificate, the way a
relying party would. Checks alg, signature, exp/nbf, aud and iss (PyJWT), and that the header's
x5t is the certificate's SHA-1 thumbprint.

Usage: jose-verify.py CERT.pem ALG AUDIENCE ISSUER < token
Prints {"header":…, "pyjwt":claims, "jwcrypto":claims}; exits 1 with the reason on failure.
"""
import base64
import hashlib
import json
import sys

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk, jws


def main():
    cert_path, alg, audience, issuer = sys.argv[1:5]
    token = sys.stdin.read().strip()
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    public = cert.public_key()
    header = jwt.get_unverified_header(token)
    thumb = base64.urlsafe_b64encode(hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).digest())
    if header.get("x5t") != thumb.rstrip(b"=").decode():
        raise SystemExit(f"x5t {header.get('x5t')} is not the certificate's thumbprint")
    by_pyjwt = jwt.decode(
        token,
        key=public,
        algorithms=[alg],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "nbf", "iss", "aud"]},
    )
    key = jwk.JWK.from_pem(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    signed = jws.JWS()
    signed.deserialize(token)
    signed.verify(key, alg=alg)
    by_jwcrypto = json.loads(signed.payload)
    print(json.dumps({"header": header, "pyjwt": by_pyjwt, "jwcrypto": by_jwcrypto}))


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # the reason, for the test's message
        raise SystemExit(f"{type(e).__name__}: {e}")
