"""
Tests for L{ftpproxy.session.security}: AUTH, PBSZ, PROT and CCC on their
own, against a fake control channel and fake commands.
"""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

from ftpproxy.session.interfaces import IDataProtection
from ftpproxy.session.security import SecurityCommands
from tests.support.fakes import FakeChannel, FakeCommand

class SessionTLS:
    """
    Stands for the TLS of the proxy's listener bound to the session
    (L{ftpproxy.tls.contexts.ServerTLS.forSession}): itself for the control
    connection, C{data} for data connections.
    """

    data = object()


SERVER_TLS = SessionTLS()
DATA_TLS = SERVER_TLS.data


class Security:
    """
    A security handler, its channel, and the session closes it asked for.
    """

    def __init__(self, serverTLS: object = SERVER_TLS, implicit: bool = False) -> None:
        self.channel = FakeChannel()
        self.closes: list[tuple[int, str]] = []
        self.handler = SecurityCommands(serverTLS, implicit, self.channel, self, "s1")

    # ISessionActions (the security handler's part)
    def closeSession(self, code: int, text: str) -> None:
        self.closes.append((code, text))

    def run(self, line: bytes) -> FakeCommand:
        """
        Give the handler C{line}; the command must be over, once.
        """
        command = FakeCommand(line)
        verb = command.verb.decode().lower()
        getattr(self.handler, verb)(command)
        assert command.finished == 1, f"{line!r} finished {command.finished} times"
        assert command.sent == [], "security commands are never relayed"
        return command

    def secure(self, mechanism: bytes = b"TLS") -> None:
        command = self.run(b"AUTH " + mechanism)
        assert command.text().startswith(b"234 ")


@pytest.fixture
def s() -> Security:
    return Security()


def test_interface(s: Security) -> None:
    assert verifyObject(IDataProtection, s.handler)


def test_startsClear(s: Security) -> None:
    assert not s.handler.tlsActive
    assert s.handler.dataTLS() is None
    assert s.channel.tlsStartedWith is None


@pytest.mark.parametrize("mechanism", [b"TLS", b"TLS-C", b"tls", b"Tls-c "])
def test_authTLS(s: Security, mechanism: bytes) -> None:
    """
    AUTH TLS (and TLS-C, in any case) answers 234 and then starts TLS with
    the listener's creator; data stays clear until PROT P.
    """
    command = s.run(b"AUTH " + mechanism)
    assert command.text() == b"234 AUTH command ok; starting TLS connection.\r\n"
    assert s.channel.tlsStartedWith is SERVER_TLS
    assert s.handler.tlsActive
    assert s.handler.dataTLS() is None
    assert s.closes == []


@pytest.mark.parametrize("mechanism", [b"SSL", b"TLS-P", b"ssl"])
def test_authImpliesPrivateData(s: Security, mechanism: bytes) -> None:
    """
    The old AUTH SSL and AUTH TLS-P meant protected data connections too.
    """
    s.secure(mechanism)
    assert s.channel.tlsStartedWith is SERVER_TLS
    assert s.handler.dataTLS() is DATA_TLS


def test_authWithoutCertificate() -> None:
    s = Security(serverTLS=None)
    command = s.run(b"AUTH TLS")
    assert command.text() == b"502 TLS is not offered on this port.\r\n"
    assert s.channel.tlsStartedWith is None
    assert not s.handler.tlsActive
    assert s.handler.features() == []


def test_authTwice(s: Security) -> None:
    s.secure()
    s.channel.tlsStartedWith = None
    command = s.run(b"AUTH TLS")
    assert command.text() == b"503 TLS is already active.\r\n"
    assert s.channel.tlsStartedWith is None


@pytest.mark.parametrize("mechanism", [b"KERBEROS_V4", b"", b"TLS-X", b"GSSAPI"])
def test_authUnknownMechanism(s: Security, mechanism: bytes) -> None:
    command = s.run(b"AUTH " + mechanism if mechanism else b"AUTH")
    assert command.text() == b"504 Unknown security mechanism; use AUTH TLS.\r\n"
    assert s.channel.tlsStartedWith is None
    assert not s.handler.tlsActive


def test_commandsInjectedAfterAuth() -> None:
    """
    Bytes received behind AUTH before the handshake (CVE-2011-0411): they
    are thrown away and the session is closed with 421; no 234, no TLS.
    """
    s = Security()
    s.channel.pending = True
    command = FakeCommand(b"AUTH TLS")
    s.handler.auth(command)
    assert s.closes == [(421, "Commands after AUTH before the TLS handshake; closing.")]
    assert command.text() == b""
    assert s.channel.tlsStartedWith is None
    assert not s.channel.pending
    assert not s.handler.tlsActive


@pytest.mark.parametrize("line", [b"PBSZ 0", b"PROT P", b"PROT C"])
def test_beforeAuth(s: Security, line: bytes) -> None:
    command = s.run(line)
    assert command.text() == b"503 " + line[:4] + b" requires AUTH first.\r\n"
    assert s.handler.dataTLS() is None


def test_pbsz(s: Security) -> None:
    s.secure()
    assert s.run(b"PBSZ 0").text() == b"200 PBSZ=0\r\n"


def test_protPrivateThenClear(s: Security) -> None:
    s.secure()
    assert s.run(b"PROT P").text() == b"200 Protection level set to Private.\r\n"
    assert s.handler.dataTLS() is DATA_TLS
    assert s.run(b"prot c").text() == b"200 Protection level set to Clear.\r\n"
    assert s.handler.dataTLS() is None


@pytest.mark.parametrize("level", [b"S", b"E"])
def test_protUnsupportedLevels(s: Security, level: bytes) -> None:
    s.secure()
    s.run(b"PROT P")
    command = s.run(b"PROT " + level)
    assert command.text() == b"536 Protection level not supported; use PROT P or PROT C.\r\n"
    assert s.handler.dataTLS() is DATA_TLS


@pytest.mark.parametrize("level", [b"X", b"", b"PP"])
def test_protUnknownLevel(s: Security, level: bytes) -> None:
    s.secure()
    command = s.run(b"PROT " + level if level else b"PROT")
    assert command.text() == b"504 Unknown protection level; use PROT P or PROT C.\r\n"
    assert s.handler.dataTLS() is None


def test_cccInTheClear(s: Security) -> None:
    assert s.run(b"CCC").text() == b"533 Command channel is not protected.\r\n"


def test_cccRefusedUnderTLS(s: Security) -> None:
    s.secure()
    assert s.run(b"CCC").text() == b"534 CCC refused: the command channel stays protected.\r\n"
    assert s.handler.tlsActive


def test_implicit() -> None:
    """
    Implicit FTPS: TLS from the first byte (the control connection starts
    it, not AUTH) and PROT P assumed; PBSZ/PROT work without AUTH, AUTH is
    refused.
    """
    s = Security(implicit=True)
    assert s.handler.tlsActive
    assert s.handler.dataTLS() is DATA_TLS
    assert s.channel.tlsStartedWith is None
    assert s.run(b"PBSZ 0").text() == b"200 PBSZ=0\r\n"
    assert s.run(b"PROT C").text() == b"200 Protection level set to Clear.\r\n"
    assert s.handler.dataTLS() is None
    assert s.run(b"AUTH TLS").text() == b"503 TLS is already active.\r\n"


def test_resetKeepsTLS(s: Security) -> None:
    """
    REIN: data protection back to clear (the explicit default), but the
    control connection stays under TLS.
    """
    s.secure()
    s.run(b"PROT P")
    s.handler.reset()
    assert s.handler.dataTLS() is None
    assert s.handler.tlsActive
    assert s.run(b"PBSZ 0").text() == b"200 PBSZ=0\r\n"


def test_resetAfterAuthSSL(s: Security) -> None:
    s.secure(b"SSL")
    s.handler.reset()
    assert s.handler.dataTLS() is None
    assert s.handler.tlsActive


def test_resetImplicit() -> None:
    s = Security(implicit=True)
    s.run(b"PROT C")
    s.handler.reset()
    assert s.handler.dataTLS() is DATA_TLS
    assert s.handler.tlsActive


def test_features(s: Security) -> None:
    assert s.handler.features() == [b"AUTH TLS", b"PBSZ", b"PROT"]
