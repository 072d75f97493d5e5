"""
Which handler answers which command: the one place to look.

Each entry names a handler of the session and its method. A session with a
backend uses L{COMMANDS}; a session whose proxy greeted the client itself and
waits for USER to choose the backend (the user-hash policy, or
C{backend_at_user}) uses L{BEFORE_BACKEND} until then. A verb missing from
the table is relayed to the backend as it is (L{RELAY}), or refused with 530
before the backend is chosen.

The verbs in L{NEEDS_LOGIN} are refused with 530 until the backend has
accepted a login (said 230): they are the ones the proxy answers itself or
that take one of its passive ports, so a stranger who never logs in holds
nothing of the proxy's and learns nothing from it.
"""

from __future__ import annotations

from ftpproxy.session.transfer import TRANSFER_DIRECTIONS

COMMANDS: dict[bytes, tuple[str, str]] = {
    # TLS, answered by the proxy (RFC 4217)
    b"AUTH": ("security", "auth"),
    b"PBSZ": ("security", "pbsz"),
    b"PROT": ("security", "prot"),
    b"CCC": ("security", "ccc"),
    # login, relayed and watched
    b"USER": ("login", "userCommand"),
    b"PASS": ("login", "passCommand"),
    # USER, PASS (332 Need account), ACCT, then 230: the login ends here.
    b"ACCT": ("login", "passCommand"),
    # data connections, answered by the proxy
    b"PASV": ("data", "pasv"),
    b"EPSV": ("data", "epsv"),
    b"LPSV": ("data", "lpsv"),
    b"PORT": ("data", "port"),
    b"EPRT": ("data", "eprt"),
    b"LPRT": ("data", "lprt"),
    b"REST": ("data", "rest"),
    # transfers
    **{verb: ("transfers", "transfer") for verb in TRANSFER_DIRECTIONS},
    b"ABOR": ("transfers", "abort"),
    # relayed with a twist
    b"FEAT": ("general", "feat"),
    b"TYPE": ("general", "type"),
    b"QUIT": ("general", "quit"),
    b"REIN": ("general", "rein"),
}

#: Under the user-hash policy, USER chooses (or changes) the backend.
ROUTING_BY_USER: dict[bytes, tuple[str, str]] = {
    b"USER": ("routing", "user"),
}

BEFORE_BACKEND: dict[bytes, tuple[str, str]] = {
    b"AUTH": ("security", "auth"),
    b"PBSZ": ("security", "pbsz"),
    b"PROT": ("security", "prot"),
    b"CCC": ("security", "ccc"),
    b"USER": ("routing", "user"),
    b"FEAT": ("routing", "feat"),
    b"SYST": ("routing", "syst"),
    b"NOOP": ("routing", "noop"),
    b"HELP": ("routing", "help"),
    b"OPTS": ("routing", "opts"),
    b"QUIT": ("routing", "quit"),
}

RELAY = ("general", "relay")

#: Refused with 530 before a login: data connections, restart markers and
#: transfers (the backend would refuse them too, but these the proxy
#: answers, or takes a passive port for, by itself).
NEEDS_LOGIN = frozenset(
    {b"PASV", b"EPSV", b"LPSV", b"PORT", b"EPRT", b"LPRT", b"REST", *TRANSFER_DIRECTIONS}
)

#: Read and acted on while a transfer runs; other commands wait their turn.
URGENT_DURING_TRANSFER = frozenset({b"ABOR", b"QUIT"})
