"""
A pyftpdlib FTP server for the integration tests, run as its own process.

Run it with C{sys.executable path/to/ftpserver.py --host H --root DIR}; it
binds an OS-chosen port and prints C{PORT <n>} on stdout once it listens, so
the test can wait for readiness instead of sleeping.  Logs go to stderr.

It imports nothing from the project so that it runs from any directory.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

USER = "user"
PASSWORD = "secret"
FULL_PERMISSIONS = "elradfmwMT"
READ_PERMISSIONS = "elr"


def parsePortRange(text: str) -> list[int]:
    """
    Parse C{LO-HI} into the list of ports it names.
    """
    low, high = (int(part) for part in text.split("-", 1))
    if not 0 < low <= high < 65536:
        raise argparse.ArgumentTypeError(f"bad port range {text!r}")
    return list(range(low, high + 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", required=True)
    parser.add_argument("--name", default="ftp")
    parser.add_argument("--passive-ports", type=parsePortRange, default=None)
    options = parser.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s {options.name} %(levelname)s %(message)s",
    )

    authorizer = DummyAuthorizer()
    authorizer.add_user(USER, PASSWORD, options.root, perm=FULL_PERMISSIONS)
    authorizer.add_anonymous(options.root, perm=READ_PERMISSIONS)

    handler = type("Handler", (FTPHandler,), {})
    handler.authorizer = authorizer
    handler.banner = f"{options.name} ready"
    # None lets the OS choose each passive port.
    handler.passive_ports = options.passive_ports
    handler.timeout = 120

    serve(options.host, options.port, handler)


def serve(host: str, port: int, handler: type) -> None:
    """
    Listen, tell the harness the port on standard output, serve until
    killed. Every backend script ends with this.
    """
    server = FTPServer((host, port), handler)
    sys.stdout.write(f"PORT {server.socket.getsockname()[1]}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(handle_exit=True)
    finally:
        server.close_all()


if __name__ == "__main__":
    main()
