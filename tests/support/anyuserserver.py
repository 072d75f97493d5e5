"""
A pyftpdlib FTP server that lets in any user name with the test password,
for the load-balancing tests: routing by user needs many users, and every
node of a cluster knows them all (as Alfresco nodes sharing one user
directory do).

Run it with C{sys.executable path/to/anyuserserver.py --host H --root DIR
[--port N]}; it prints C{PORT <n>} on stdout once it listens.  A fixed
C{--port} lets a test restart a killed backend where it was.

Like C{ftpserver.py} it imports nothing from the project.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler

from ftpserver import serve  # a sibling script: run as a script, its folder is on sys.path

PASSWORD = "secret"
FULL_PERMISSIONS = "elradfmwMT"


class _EveryUser(dict):
    """
    A user table in which every name exists, all sharing one root.
    """

    def __init__(self, root: str, name: str) -> None:
        super().__init__()
        self._root = os.path.realpath(root)
        self._name = name

    def __contains__(self, username: object) -> bool:
        return isinstance(username, str) and username != "anonymous"

    def __missing__(self, username: str) -> dict:
        entry = {
            "pwd": PASSWORD,
            "home": self._root,
            "perm": FULL_PERMISSIONS,
            "operms": {},
            "msg_login": f"Login successful on {self._name}.",
            "msg_quit": "Goodbye.",
        }
        self[username] = entry
        return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--root", required=True)
    parser.add_argument("--name", default="ftp")
    options = parser.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s {options.name} %(levelname)s %(message)s",
    )

    authorizer = DummyAuthorizer()
    authorizer.user_table = _EveryUser(options.root, options.name)

    handler = type("Handler", (FTPHandler,), {})
    handler.authorizer = authorizer
    handler.banner = f"{options.name} ready"
    handler.timeout = 120

    serve(options.host, options.port, handler)


if __name__ == "__main__":
    main()
