#!/usr/bin/env python3
"""Runs SQLite's own integrity check on a database (read-only), with Python's sqlite3.

Usage: sqlite_check.py DB — exits 0 if `PRAGMA integrity_check` answers "ok"."""
import sqlite3
import sys

c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
rows = [r[0] for r in c.execute("PRAGMA integrity_check")]
print("\n".join(rows))
sys.exit(0 if rows == ["ok"] else 1)
