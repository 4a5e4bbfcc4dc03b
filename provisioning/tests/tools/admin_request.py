#!/usr/bin/env python3
"""Sends one admin request line to a Unix socket and prints the answer line.

Usage: admin_request.py SOCKET REQUEST_JSON"""
import socket
import sys

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
print(s.makefile().readline().strip())
