"""
A flooding FTP client, run as its own process so that its work does not
share an interpreter lock with what the test measures.

C{python flooder.py HOST PORT USER PASSWORD SECONDS KIND} logs in, then
sends blocks of bare line feeds (KIND C{lines}: each an empty command) or of
Telnet NOPs (KIND C{telnet}: no command at all) as fast as the server takes
them for SECONDS while reading the replies, and prints
C{SENT <bytes> ANSWERED <replies> CLOSED <0|1>}.

It imports nothing from the project so that it runs from any directory.
"""

from __future__ import annotations

import socket
import sys
import threading
import time


BLOCKS = {"lines": b"\n" * 65536, "telnet": b"\xff\xf1" * 32768}


def main(host: str, port: int, user: str, password: str, seconds: float, kind: str) -> None:
    sock = socket.create_connection((host, port), timeout=30)
    reader = sock.makefile("rb")
    for command in (None, f"USER {user}", f"PASS {password}"):
        if command is not None:
            sock.sendall(command.encode() + b"\r\n")
        line = reader.readline()
        while line[3:4] == b"-":
            line = reader.readline()
    sock.settimeout(0.5)
    answered = 0
    closed = False
    stop = threading.Event()

    def read() -> None:
        nonlocal answered, closed
        while not stop.is_set():
            try:
                chunk = sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                closed = True
                return
            answered += chunk.count(b"\n")

    thread = threading.Thread(target=read)
    thread.start()
    block = BLOCKS[kind]
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not closed:
            try:
                sent += sock.send(block)
            except socket.timeout:
                continue
    except OSError:
        closed = True
    stop.set()
    thread.join()
    sock.close()
    print(f"SENT {sent} ANSWERED {answered} CLOSED {int(closed)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6])
