#!/usr/bin/env python3
"""Parses a DER CRL with pyca/cryptography (independent of sitesign) and checks its signature
with the issuer certificate; prints what a relying party sees, as JSON.

Usage: crl_check.py CRL_DER ISSUER_PEM"""
import json
import sys

from cryptography import x509

crl = x509.load_der_x509_crl(open(sys.argv[1], "rb").read())
issuer = x509.load_pem_x509_certificate(open(sys.argv[2], "rb").read())
out = {
    "signature_valid": crl.is_signature_valid(issuer.public_key()),
    "issuer": crl.issuer.rfc4514_string(),
    "this_update": int(crl.last_update_utc.timestamp()),
    "next_update": int(crl.next_update_utc.timestamp()) if crl.next_update_utc else None,
    "number": crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number,
    "revoked": [
        {
            "serial": format(r.serial_number, "x"),
            "reason": r.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
            if any(isinstance(e.value, x509.CRLReason) for e in r.extensions)
            else None,
        }
        for r in crl
    ],
}
print(json.dumps(out))
