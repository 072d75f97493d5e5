"""
The transfer and a data channel that holds the upload's go-ahead (see
L{ftpproxy.data.legs.DataLegFactory.afterHandshake}): the 150 goes out when
the channel lets it, and always before anything else the transfer says.
"""

from __future__ import annotations

from typing import Callable

import pytest
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure

from tests import test_transfer
from tests.support.fakes import FakeCommand, FakeDataChannel
from tests.support.memory import loggedFailures  # noqa: F401 (a fixture)
from tests.test_transfer import Run

pytestmark = pytest.mark.usefixtures("loggedFailures")


class HoldingChannel(FakeDataChannel):
    """
    Holds what afterHandshake is given until told, or until closed (as the
    real channels do).
    """

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Callable[[], None]] = []

    def afterHandshake(self, callback: Callable[[], None]) -> None:
        self.held.append(callback)

    def release(self) -> None:
        held, self.held = self.held, []
        for callback in held:
            callback()

    def close(self) -> None:
        self.release()
        super().close()


@pytest.fixture
def holdingRun(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Run]:
    """
    test_transfer's harness for an upload, with a channel that holds.
    """
    monkeypatch.setattr(test_transfer, "FakeDataChannel", HoldingChannel)
    return lambda: Run(b"STOR file")


def test_goAheadWaitsForTheChannel(holdingRun: Callable[[], Run]) -> None:
    run = holdingRun()
    run.toCommand()
    run.clientLeg()
    run.command.answer(1, b"150 Ok to send")
    assert run.command.text() == b""
    run.channel.release()
    assert run.command.text() == b"150 Ok to send\r\n"


def test_heldGoAheadComesBeforeTheEnd(holdingRun: Callable[[], Run]) -> None:
    """
    The client's data connection fails while the go-ahead is held: the
    client hears 150, then the 425.
    """
    run = holdingRun()
    run.toCommand()
    run.command.answer(1, b"150 Ok to send")
    run.channel.onFailed(Failure(ConnectionRefusedError()))
    assert run.command.text() == (
        b"150 Ok to send\r\n425 Can't open data connection to your data port.\r\n"
    )
    assert run.channel.closed


def test_heldGoAheadComesBeforeTheAbort(holdingRun: Callable[[], Run]) -> None:
    run = holdingRun()
    run.toCommand()
    run.clientLeg()
    run.command.answer(1, b"150 Ok to send")
    abor = FakeCommand(b"ABOR")
    run.transfer.abort(abor)
    assert run.command.text() == b"150 Ok to send\r\n"
    assert run.channel.closed
