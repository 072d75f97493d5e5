"""
Tests for the table of L{ftpproxy.session.machine}: every (state, input)
pair is declared or listed as one that cannot happen, and the machine's
outputs give inputs only through the run-to-completion inbox.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any, Callable

import attrs
import pytest
from twisted.internet.task import Clock

from ftpproxy.session import machine
from tests.support.fakes import FakeChannel, FakePool, FakeThrottle, RecordingEvents
from tests.support.machines import inputNames, undeclared

STATES = ["new", "connecting", "awaitingUser", "idle", "busy", "transferring", "closing", "closed"]


def _automaton() -> Any:
    return machine._Machine.__automat_automaton__


def test_states() -> None:
    """
    The states below are all there are (a new one must be added to
    L{STATES}, and so to the table check).
    """
    assert sorted(state.name for state in _automaton().states()) == sorted(STATES)
    assert _automaton().initialState.name == "new"


def test_tableComplete() -> None:
    """
    Every input is declared in every state, or listed as one that cannot
    happen there.
    """
    missing = undeclared(machine._Machine, machine.SessionInputs, STATES)
    assert missing == {name: set(states) for name, (states, _) in machine.CANNOT_HAPPEN.items()}


def test_cannotHappenNamesRealInputsAndStates() -> None:
    inputs = inputNames(machine.SessionInputs)
    for name, (states, why) in machine.CANNOT_HAPPEN.items():
        assert name in inputs
        assert states <= set(STATES), name
        assert why


# -- outputs give inputs through the inbox --------------------------------------------------


def _outputs() -> list[Callable[..., Any]]:
    """
    The functions of machine.py that the automaton runs: transition outputs
    and state data factories.
    """
    found: dict[int, Callable[..., Any]] = {}
    for _, _, _, outputs in _automaton().allTransitions():
        for output in outputs:
            function = getattr(output, "method", None) or getattr(output, "dataFactory", None)
            assert function is not None, output
            if function.__module__ == machine.__name__:
                found[id(function)] = function
    return list(found.values())


def _readsOfFirstParameter(function: Callable[..., Any]) -> tuple[str, list[int]]:
    source = textwrap.dedent(inspect.getsource(function))
    definition = ast.parse(source).body[0]
    assert isinstance(definition, ast.FunctionDef)
    first = definition.args.args[0].arg
    lines = [
        node.lineno
        for statement in definition.body
        for node in ast.walk(statement)
        if isinstance(node, ast.Name) and node.id == first
    ]
    return first, lines


def test_outputsFound() -> None:
    names = {function.__name__ for function in _outputs()}
    assert {"_backendReady", "_transferStarted", "_idleData", "_finishedDuringTransfer"} <= names
    assert len(names) >= 25


@pytest.mark.parametrize("function", _outputs(), ids=lambda f: f.__name__)
def test_outputGivesNoInputDirectly(function: Callable[..., Any]) -> None:
    """
    An output is handed the automaton itself as its first argument; giving
    it an input from there would run inside the transition instead of after
    it. Outputs must use C{core.machine}, the inbox: the first argument is
    never even read.
    """
    first, lines = _readsOfFirstParameter(function)
    assert first == "machine"
    assert lines == [], f"{function.__name__} uses {first!r} (lines {lines} of its source)"


def test_onlyTheInboxHoldsTheAutomaton() -> None:
    """
    The automaton is made once, straight into an inbox, and C{.machine}
    attributes are only ever set to an inbox, or to the sink of an ended
    session.
    """
    tree = ast.parse(inspect.getsource(machine))
    made = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_Machine"
    ]
    assert len(made) == 1
    wrapping = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "_Inbox"
        and made[0] in node.args
    ]
    assert len(wrapping) == 1
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Attribute) and target.attr == "machine" for target in node.targets
        ):
            ended = isinstance(node.value, ast.Name) and node.value.id == "_ENDED"
            assert node.value is wrapping[0] or ended, ast.unparse(node)


# -- the inbox -------------------------------------------------------------------------


class Recorder:
    """
    Stands for the automaton: records inputs, and gives a second input from
    inside the first, as an output would.
    """

    def __init__(self) -> None:
        self.events: list[str] = []
        self.inbox: Any = None

    # Real input names: the inbox has a method for each input only.
    def linesAvailable(self) -> None:
        self.events.append("first begins")
        self.inbox.close(2, "")
        self.inbox.settled()
        self.events.append("first ends")

    def close(self, value: int, text: str) -> None:
        self.events.append(f"second {value}")

    def settled(self) -> None:
        self.events.append("third")


def test_inboxRunsToCompletion() -> None:
    recorder = Recorder()
    inbox = recorder.inbox = machine._Inbox(recorder)
    inbox.linesAvailable()
    assert recorder.events == ["first begins", "first ends", "second 2", "third"]
    inbox.close(5, "")
    assert recorder.events[-1] == "second 5"


def test_inboxAfterAnError() -> None:
    """
    An input that raises does not leave the inbox stuck.
    """

    class Failing:
        def clientLost(self) -> None:
            raise RuntimeError("boom")

        def settled(self) -> None:
            self.ran = True

    failing = Failing()
    inbox = machine._Inbox(failing)
    with pytest.raises(RuntimeError):
        inbox.clientLost()
    inbox.settled()
    assert failing.ran


@attrs.define
class Config:
    loginTimeout: float = 0
    requireTLS: bool = False
    idleTimeout: float = 0
    maxInvalidCommands: int = 0


def test_startSessionGivesTheInbox() -> None:
    """
    What the control connection holds is the inbox, not the automaton.
    """
    channel = FakeChannel()
    services = machine.SessionServices(
        reactor=Clock(),
        config=Config(),
        pool=FakePool(),
        passivePorts=None,
        serverTLS=None,
        events=RecordingEvents(),
        loginThrottle=FakeThrottle(),
        backendTLS=lambda backend: None,
        routesByUser=True,
        greeting="ftpproxy ready",
        newSessionId=lambda: "s1",
    )
    inputs = machine.startSession(services, channel, "s1", False)
    assert isinstance(inputs, machine._Inbox)
    assert channel.replies == [b"220 ftpproxy ready\r\n"]
    inputs.close(421, "Shutting down.")
    assert channel.replies[-1] == b"421 Shutting down.\r\n"
    assert channel.closed
