#!/usr/bin/env python3
"""Makes a consistent-looking but forged sitesign backup, as an attacker with write access to
the backup store would, with manifest.json's sizes and SHA-256s and OUT.sha256 recomputed:

  edit-record   one audit record's subject changed in audit.db (only the hash chain can tell)
  add-trigger   a trigger in state.db that deletes every bulk token as soon as one is added (the
                audit chain is intact; only a schema check can tell)
  symlink       an extra member that is a symbolic link to /etc/passwd

Usage: backup_tamper.py MODE ARCHIVE OUT"""
import hashlib
import io
import json
import os
import sqlite3
import sys
import tarfile
import tempfile

mode, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
with tempfile.TemporaryDirectory() as work:
    with tarfile.open(src) as tar:
        names = tar.getnames()
        assert names == ["manifest.json", "state.db", "audit.db"], names
        for name in names:
            with open(os.path.join(work, name), "wb") as f:
                f.write(tar.extractfile(name).read())
    if mode == "edit-record":
        db = sqlite3.connect(os.path.join(work, "audit.db"))
        changed = db.execute(
            "UPDATE audit SET subject = 'GUID:00000000-0000-0000-0000-000000000000' "
            "WHERE seq = (SELECT min(seq) FROM audit WHERE kind = 'client-token')").rowcount
        assert changed == 1, changed
        db.commit()
        db.close()
    elif mode == "add-trigger":
        db = sqlite3.connect(os.path.join(work, "state.db"))
        db.execute("CREATE TRIGGER bulk_forget AFTER INSERT ON bulk_tokens BEGIN DELETE FROM bulk_tokens; END")
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
        if mode == "symlink":
            link = tarfile.TarInfo("state.db-wal")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            tar.addfile(link)
digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
with open(out + ".sha256", "w") as f:
    f.write(f"{digest}  {os.path.basename(out)}\n")
print(json.dumps({"forged": out}))
