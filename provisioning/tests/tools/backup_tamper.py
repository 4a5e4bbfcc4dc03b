#!/usr/bin/env python3
"""Makes a consistent-looking but forged sitesign backup, as an attacker with write access to
the backup store would: unpacks ARCHIVE, edits one audit record's subject in audit.db, and packs
it again with manifest.json's sizes and SHA-256s and ARCHIVE.sha256 recomputed — so that only
the audit hash chain can tell.

Usage: backup_tamper.py ARCHIVE OUT"""
import hashlib
import io
import json
import os
import sqlite3
import sys
import tarfile
import tempfile

src, out = sys.argv[1], sys.argv[2]
with tempfile.TemporaryDirectory() as work:
    with tarfile.open(src) as tar:
        names = tar.getnames()
        assert names == ["manifest.json", "state.db", "audit.db"], names
        for name in names:
            with open(os.path.join(work, name), "wb") as f:
                f.write(tar.extractfile(name).read())
    db = sqlite3.connect(os.path.join(work, "audit.db"))
    changed = db.execute(
        "UPDATE audit SET subject = 'GUID:00000000-0000-0000-0000-000000000000' "
        "WHERE seq = (SELECT min(seq) FROM audit WHERE kind = 'client-token')").rowcount
    assert changed == 1, changed
    db.commit()
    db.close()
    manifest = json.load(open(os.path.join(work, "manifest.json")))
    for key, name in (("state", "state.db"), ("audit", "audit.db")):
        data = open(os.path.join(work, name), "rb").read()
        manifest[key] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        body = json.dumps(manifest).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        for name in ("state.db", "audit.db"):
            tar.add(os.path.join(work, name), arcname=name)
digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
with open(out + ".sha256", "w") as f:
    f.write(f"{digest}  {os.path.basename(out)}\n")
print(json.dumps({"forged": out}))
