"""
The pyftpdlib test server of C{ftpserver.py}, but answering failed logins at
once (pyftpdlib holds each 530 back for 3 seconds by default), so that tests
of the proxy's own login throttling can time the proxy alone.

With C{QUICK_FTP_PASSIVE_TIMEOUT} in the environment, its passive data
ports wait only that many seconds for a connection (30 by default), after
which pyftpdlib sends C{421 Passive data channel timed out.}: tests use it
to see, in seconds, what a backend does when the proxy leaves a passive port
it asked for unused.

Run it exactly like C{ftpserver.py}; it prints C{PORT <n>} once it listens.
"""

from __future__ import annotations

import os

from pyftpdlib.handlers import FTPHandler

import ftpserver

if __name__ == "__main__":
    # ftpserver.py's handler is a subclass of FTPHandler: it inherits this.
    FTPHandler.auth_failed_timeout = 0
    passiveTimeout = os.environ.get("QUICK_FTP_PASSIVE_TIMEOUT")
    if passiveTimeout:
        FTPHandler.passive_dtp.timeout = float(passiveTimeout)
    ftpserver.main()
