"""
A pyftpdlib FTP server used as the fast backend of the benchmark.

Run as a child process by run.py, one process per backend address, so that
each backend has its own core-sized event loop like a real server would.
It prints C{READY host port} once it listens, which is the readiness signal
the harness waits for.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
from pyftpdlib.servers import FTPServer


def parsePortRange(text: str) -> range:
    """
    Parse C{LO-HI} (inclusive) into a range.
    """
    lo, hi = text.split("-")
    return range(int(lo), int(hi) + 1)


class DiscardingFS(AbstractedFS):
    """
    Uploads go to /dev/null: on this VM, allocating fresh tmpfs pages costs
    more than the relay under test, so writing real files would measure the
    page allocator instead of the proxies.
    """

    def open(self, filename, mode):
        if "w" in mode or "a" in mode:
            return open(os.devnull, mode)
        return super().open(filename, mode)


def buildServer(args: argparse.Namespace) -> FTPServer:
    """
    Build a pyftpdlib server: one read/write user rooted at the data dir.
    """
    authorizer = DummyAuthorizer()
    authorizer.add_user(args.user, args.password, args.root, perm="elradfmwMT")

    if args.tls_cert:
        # Explicit FTPS (AUTH TLS, PROT P), for the rows with an FTPS backend.
        # pyftpdlib's TLS connections sit on the socket (no memory BIO), and
        # downloads cannot use sendfile(2) through TLS.
        class Handler(TLS_FTPHandler):
            certfile = args.tls_cert
            keyfile = args.tls_key
    else:
        class Handler(FTPHandler):
            pass

    Handler.authorizer = authorizer
    if args.discard_uploads:
        Handler.abstracted_fs = DiscardingFS
    Handler.banner = "bench backend ready"
    # The HAProxy trick needs the backend to name the proxy in 227 replies;
    # the application-level proxies need it not to.
    Handler.masquerade_address = args.masquerade
    Handler.passive_ports = (
        parsePortRange(args.passive_ports) if args.passive_ports else None
    )
    server = FTPServer((args.host, args.port), Handler)
    server.max_cons = args.max_cons
    server.max_cons_per_ip = 0
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", required=True)
    parser.add_argument("--user", default="bench")
    parser.add_argument("--password", default="bench")
    parser.add_argument("--masquerade", default=None)
    parser.add_argument("--passive-ports", default=None)
    parser.add_argument("--discard-uploads", action="store_true")
    parser.add_argument("--max-cons", type=int, default=10000)
    parser.add_argument("--tls-cert", default=None, help="serve explicit FTPS with this PEM")
    parser.add_argument("--tls-key", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pyftpdlib").setLevel(logging.ERROR)
    server = buildServer(args)
    host, port = server.socket.getsockname()[:2]
    sys.stdout.write(f"READY {host} {port}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(handle_exit=False)
    except KeyboardInterrupt:
        pass
    finally:
        server.close_all()


if __name__ == "__main__":
    main()
