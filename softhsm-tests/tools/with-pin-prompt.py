#!/usr/bin/env python3
"""Runs a command that asks for a PIN on its terminal (pkcs11-tool --login) and answers the prompt
with the PIN read from a file, so the PIN never appears in argv or the environment.

Usage: with-pin-prompt.py PIN_FILE COMMAND [ARGS...]
"""
import os
import pty
import signal
import sys
import termios
import time


def main() -> int:
    pin_file, argv = sys.argv[1], sys.argv[2:]
    with open(pin_file, "rb") as f:
        pin = f.read().strip()
    # Never hang a test: give up after a minute.
    signal.alarm(60)
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    seen = b""
    while b"PIN:" not in seen:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    # The prompt is printed before the program turns echo off, and turning it off (TCSAFLUSH)
    # discards input typed ahead: wait until echo is off before answering.
    deadline = time.monotonic() + 10
    while termios.tcgetattr(fd)[3] & termios.ECHO and time.monotonic() < deadline:
        time.sleep(0.01)
    os.write(fd, pin + b"\n")
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    sys.stdout.buffer.write(seen.replace(pin, b"<pin>") + out.replace(pin, b"<pin>"))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
