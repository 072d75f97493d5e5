"""
A hypothesis stateful test of a whole session in memory (issue 10): random
command sequences from the client (pipelined, malformed, out of place),
random replies from a fake backend (late, wrong, unprompted), data
connections made or not, random disconnects and random waits.

Whatever happens: nothing raises or logs a failure, every byte the client
gets parses as FTP replies, the replies to the client's relayed commands
come in the order the commands were sent, and once both ends have gone no
timer, passive port or session is left.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.logger import globalLogPublisher

from ftpproxy.wire.ftptext import ReplyParser

from tests.support.memory import PROXY_HOST, Peer, ProxyHarness

TAGGED = (b"CWD d", b"SITE x", b"MKD d", b"DELE f")
LOCAL_OR_WATCHED = (
    b"PASV", b"EPSV", b"EPSV ALL", b"LPSV", b"PORT 127,0,0,5,156,65", b"EPRT |1|127.0.0.5|40001|",
    b"REST 10", b"REST x", b"PBSZ 0", b"PROT P", b"AUTH TLS", b"TYPE I", b"FEAT", b"ABOR",
    b"RETR f", b"STOR f", b"APPE f", b"LIST", b"USER u", b"PASS p", b"ACCT a", b"REIN", b"QUIT",
    b"", b"   ", b"12 x", b"X" * 700, b"\xff\xf4\xff\xf2ABOR", b"\xff\xff\xfe",
)
WAITS = (0.0, 0.0, 1.0, 11.0, 31.0, 61.0, 601.0, 901.0)
TAG = re.compile(rb"tag(\d+)")


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.failures: list[dict] = []
        globalLogPublisher.addObserver(self._observe)
        self.h = ProxyHarness(sessionTimers=True, maxLineLength=512, replyTimeout=60.0)
        self.client = self.h.connectClient()
        self.backend: Peer | None = self.h.nextConnect().complete()
        self.backend.send(b"220 ready\r\n")
        self.parser = ReplyParser()
        self.received = 0
        self.lastTag = -1
        self.nextTag = 0
        self.clientGone = False
        self.dataPeers: list[Peer] = []
        self.pendingBackendLines = b""

    def _observe(self, event: dict) -> None:
        if "log_failure" in event:
            self.failures.append(event)

    # -- the client ------------------------------------------------------------

    @precondition(lambda self: not self.clientGone)
    @rule(commands=st.lists(st.one_of(st.sampled_from(LOCAL_OR_WATCHED), st.sampled_from(TAGGED)), min_size=1, max_size=4))
    def clientSends(self, commands: list[bytes]) -> None:
        lines = []
        for command in commands:
            if command in TAGGED:
                command = command + b"tag%d" % self.nextTag
                self.nextTag += 1
            lines.append(command + b"\r\n")
        self.client.send(b"".join(lines))

    @precondition(lambda self: not self.clientGone)
    @rule(data=st.binary(min_size=1, max_size=64))
    def clientSendsGarbage(self, data: bytes) -> None:
        self.client.send(data.replace(b"tag", b"t-g"))

    @precondition(lambda self: not self.clientGone)
    @rule()
    def clientHangsUp(self) -> None:
        self.clientGone = True
        self.client.hangUp()

    @precondition(lambda self: not self.clientGone)
    @rule()
    def clientConnectsData(self) -> None:
        pool = self.h.factory.services.passivePorts
        owned = [b for b in pool._bound.values() if b.owner is not None]
        if owned:
            peer = self.h.connectData(owned[0].number, sourcePort=42000 + len(self.dataPeers))
            if peer is not None:
                self.dataPeers.append(peer)

    # -- the backend ---------------------------------------------------------------

    def _answer(self, line: bytes, choice: int) -> bytes:
        verb = line.split(b" ", 1)[0].upper()
        tag = TAG.search(line)
        if tag is not None:
            return b"%d tag%s\r\n" % ((250, 550)[choice % 2], tag.group(1))
        if verb in (b"EPSV", b"PASV"):
            if choice % 3 == 0:
                return b"500 Unknown.\r\n"
            if verb == b"EPSV":
                return b"229 Entering Extended Passive Mode (|||31000|)\r\n"
            return b"227 Entering Passive Mode (127,0,0,2,121,24).\r\n"
        if verb in (b"RETR", b"STOR", b"APPE", b"LIST"):
            return (b"150 Opening.\r\n226 Done.\r\n", b"550 No.\r\n", b"150 Opening.\r\n", b"425 No data.\r\n")[choice % 4]
        if verb == b"USER":
            return (b"331 Password.\r\n", b"230 Welcome.\r\n", b"530 No.\r\n")[choice % 3]
        if verb in (b"PASS", b"ACCT"):
            return (b"230 Welcome.\r\n", b"530 Login incorrect.\r\n")[choice % 2]
        if verb == b"QUIT":
            return b"221 Bye.\r\n"
        if verb == b"REIN":
            return b"220 Again.\r\n"
        if verb == b"FEAT":
            return (b"211-Features:\r\n MDTM\r\n EPSV\r\n211 End\r\n", b"500 No.\r\n")[choice % 2]
        return (b"200 OK.\r\n", b"500 What?\r\n", b"502 No.\r\n")[choice % 3]

    @precondition(lambda self: self.backend is not None)
    @rule(choice=st.integers(0, 11), howMany=st.integers(1, 3))
    def backendAnswers(self, choice: int, howMany: int) -> None:
        self.pendingBackendLines += self.backend.take()
        for _ in range(howMany):
            if b"\r\n" not in self.pendingBackendLines:
                return
            line, self.pendingBackendLines = self.pendingBackendLines.split(b"\r\n", 1)
            self.backend.send(self._answer(line, choice))

    @precondition(lambda self: self.backend is not None)
    @rule(reply=st.sampled_from([b"200 Unprompted.\r\n", b"421 Going away.\r\n", b"226 Late.\r\n", b"garbage\r\n"]))
    def backendSpeaksUnprompted(self, reply: bytes) -> None:
        self.backend.send(reply)

    @precondition(lambda self: self.backend is not None)
    @rule()
    def backendHangsUp(self) -> None:
        self.backend.hangUp()
        self.backend = None

    @rule(succeed=st.booleans())
    def dataConnectsComplete(self, succeed: bool) -> None:
        for attempt in self.h.newConnects():
            if attempt.cancelled:
                continue
            if succeed and attempt.host == "127.0.0.2":
                self.dataPeers.append(attempt.complete(localHost=PROXY_HOST, localPort=45100))
            elif attempt.host == "127.0.0.5":
                # Active mode: the proxy connects to the client.
                self.dataPeers.append(attempt.complete())
            else:
                attempt.fail()

    @rule(payload=st.binary(max_size=32))
    def dataFlows(self, payload: bytes) -> None:
        for peer in self.dataPeers:
            if not peer.closed:
                peer.send(payload)
                peer.take()

    @rule()
    def dataHangsUp(self) -> None:
        for peer in self.dataPeers:
            if not peer.closed:
                peer.hangUp()
                return

    # -- time --------------------------------------------------------------------

    @rule(seconds=st.sampled_from(WAITS))
    def timePasses(self, seconds: float) -> None:
        self.h.advance(seconds)

    # -- what must hold ------------------------------------------------------------

    @invariant()
    def repliesAreWellFormedAndInOrder(self) -> None:
        data = self.client.take()
        for reply in self.parser.feed(data):
            self.received += 1
            for line in reply.lines:
                tag = TAG.search(line)
                if tag is not None:
                    number = int(tag.group(1))
                    assert number > self.lastTag, f"tag{number} after tag{self.lastTag}"
                    self.lastTag = number

    @invariant()
    def nothingFailed(self) -> None:
        assert not [e["log_failure"].getTraceback() for e in self.failures]

    def teardown(self) -> None:
        try:
            if not self.clientGone:
                self.client.hangUp()
            if self.backend is not None:
                self.backend.hangUp()
            for peer in self.dataPeers:
                if not peer.closed:
                    peer.hangUp()
            for attempt in self.h.newConnects():
                if not attempt.cancelled:
                    attempt.fail()
            # Connection losses are reported on the next turns; no time
            # passes, so a timer left behind shows.
            for _ in range(3):
                self.h.flush()
            assert self.h.sessions == set()
            assert self.h.reactor.getDelayedCalls() == []
            pool = self.h.factory.services.passivePorts
            assert pool.owned == 0
            assert len(self.h.reactor.openPorts()) == pool.idle
            self.nothingFailed()
        finally:
            globalLogPublisher.removeObserver(self._observe)


SessionMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSession = SessionMachine.TestCase
