#!/usr/bin/env python3
"""
Make a development CA, a server certificate and a client certificate for
ftpproxy's demo and tests.  See README.md beside this file.

    python certs/make-certs.py [DIRECTORY] [--name NAME ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Runnable from a checkout without installing ftpproxy.
sys.path.insert(0, str(HERE.parent))

from ftpproxy.tls.devcerts import DEFAULT_SERVER_NAMES, makeCertificates  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "directory",
        nargs="?",
        type=Path,
        default=HERE / "dev",
        help="where to write the PEM files (default: certs/dev)",
    )
    parser.add_argument(
        "--name",
        action="append",
        dest="names",
        help="a DNS name or IP address for the server certificate "
        "(repeatable; default: %s)" % ", ".join(DEFAULT_SERVER_NAMES),
    )
    options = parser.parse_args(argv)
    paths = makeCertificates(options.directory, options.names or DEFAULT_SERVER_NAMES)
    for field in ("ca", "serverCert", "serverKey", "serverChainPem",
                  "clientCert", "clientKey"):
        print(f"{field:15} {getattr(paths, field)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
