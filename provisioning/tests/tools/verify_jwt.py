#!/usr/bin/env python3
"""Verifies a sitesign token with third-party JOSE libraries, as a relying party would.

Usage: verify_jwt.py TOKEN CERT_PEM JWKS_URL CA_PEM MP_CRT MP_KEY

- PyJWT with the public key of CERT_PEM (the token-signing certificate from /v1/certificates);
- PyJWT's JWKS client fetching JWKS_URL over mTLS (the key matched by the header's x5t, as
  sitesign's header names the key by x5t, like ConfigMgr's tokens);
- jwcrypto with the whole JWKS.

All three must agree; prints the claims as JSON.
"""
import json
import ssl
import sys

import jwt
from cryptography import x509
from jwcrypto import jwk, jws

token, cert, url, ca, mp_crt, mp_key = sys.argv[1:7]
alg = jwt.get_unverified_header(token)["alg"]
pub = x509.load_pem_x509_certificate(open(cert, "rb").read()).public_key()
a = jwt.decode(token, pub, algorithms=[alg], audience="urn:sccm:service")
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(mp_crt, mp_key)
client = jwt.PyJWKClient(url, ssl_context=ctx)
x5t = jwt.get_unverified_header(token)["x5t"]
keys = client.get_signing_keys()
key = next(k for k in keys if k._jwk_data.get("x5t") == x5t)
b = jwt.decode(token, key.key, algorithms=[alg], audience="urn:sccm:service")
keyset = jwk.JWKSet.from_json(json.dumps({"keys": [k._jwk_data for k in keys]}))
s = jws.JWS()
s.deserialize(token)
s.verify(keyset)
assert a == b == json.loads(s.payload), (a, b, s.payload)
print(json.dumps(a))
