#!/usr/bin/env python3
"""Runs SQL against a SQLite database with Python's own sqlite3 (an editor outside sitesign).

Usage: sqlite_exec.py DB SQL"""
import sqlite3
import sys

c = sqlite3.connect(sys.argv[1])
c.executescript(sys.argv[2])
c.commit()
c.close()
