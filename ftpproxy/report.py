"""
What FTPS clients did, read from the proxy's JSON log:

    python -m ftpproxy.report [--json] LOG...

prints, per client TLS fingerprint, its sessions, the versions and ciphers
negotiated, the data connections that resumed the control connection's
session, and the handshakes that failed, by reason and by listener (with
what a correct client does on each listener of the TLS rig).  The admin
endpoint serves the same at /clients.  See L{ftpproxy.ops.clients}.
"""

from __future__ import annotations

import sys

from ftpproxy.ops.clients import main as _main
from ftpproxy.settings.rig import rigExpectations


def main(argv: list[str] | None = None) -> int:
    return _main(sys.argv[1:] if argv is None else argv, expectations=rigExpectations())


if __name__ == "__main__":
    sys.exit(main())
