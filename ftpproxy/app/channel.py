"""
The channel between the supervisor and each of its worker processes: AMP
(Twisted's asynchronous messaging protocol) over a socketpair the
supervisor makes when it starts the worker.

The supervisor tells a worker::

  Start        index, count, the worker's configuration, its listening
               sockets (descriptors it inherited), the backends the
               supervisor's checks hold down and those drained
  Reconfigure  a reloaded configuration (answer: applied or not)
  Drain        stop sending new sessions to a backend (answer: known)
  Enable       take it again (answer: known)
  CheckResult  one active health check's result, for the worker's pool

and a worker tells the supervisor, at most once per reactor turn::

  Report       what happened since the last report: lines of JSON, each
               either a list C{[method, arguments]} naming an
               L{ftpproxy.events.IProxyEvents} call, or an object, a log
               event: its plain fields and its message formatted (in
               L{FORMATTED}), or, with a failure, the whole event as
               C{twisted.logger.eventAsJSON} writes it

Trust goes one way: the supervisor starts the workers and may hand them a
pickled configuration; what a worker sends (it talks to clients on the
internet) is JSON, and the supervisor acts only on the calls it knows.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

from twisted.protocols import amp

#: The largest value AMP carries under one key.
_PIECE = 0xFFFF


class BigBytes(amp.Argument):
    """
    Bytes of any length: AMP limits a value to 64 KiB, so longer ones are
    spread over the keys C{name}, C{name.1}, C{name.2}, ...
    """

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        value = self.toBytes(objects.pop(name.decode("ascii")))
        pieces = [value[i : i + _PIECE] for i in range(0, len(value), _PIECE)] or [b""]
        strings[name] = pieces[0]
        for number, piece in enumerate(pieces[1:], start=1):
            strings[b"%s.%d" % (name, number)] = piece

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        pieces = [strings.pop(name)]
        number = 1
        while (key := b"%s.%d" % (name, number)) in strings:
            pieces.append(strings.pop(key))
            number += 1
        objects[name.decode("ascii")] = self.fromBytes(b"".join(pieces))

    def toBytes(self, value: Any) -> bytes:
        return value

    def fromBytes(self, data: bytes) -> Any:
        return data


class JSON(BigBytes):
    """
    A value JSON can say.
    """

    def toBytes(self, value: Any) -> bytes:
        return json.dumps(value).encode("utf-8")

    def fromBytes(self, data: bytes) -> Any:
        return json.loads(data)


class Pickled(BigBytes):
    """
    A pickled value: only ever sent from the supervisor to its workers.
    """

    def toBytes(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def fromBytes(self, data: bytes) -> Any:
        return pickle.loads(data)


# -- supervisor to worker ------------------------------------------------------


class Start(amp.Command):
    """
    Run the proxy with C{config} on the inherited listening sockets
    C{listeners} (a list of objects: fd, ipv6, implicit, description);
    the answer comes once they are adopted.
    """

    arguments = [
        (b"index", amp.Integer()),
        (b"count", amp.Integer()),
        (b"config", Pickled()),
        (b"listeners", JSON()),
        (b"down", JSON()),
        (b"draining", JSON()),
    ]
    response: list = []


class Reconfigure(amp.Command):
    """
    Apply a reloaded configuration for new sessions.
    """

    arguments = [(b"config", Pickled())]
    response = [(b"applied", amp.Boolean())]


class Drain(amp.Command):
    arguments = [(b"name", amp.Unicode())]
    response = [(b"found", amp.Boolean())]


class Enable(amp.Command):
    arguments = [(b"name", amp.Unicode())]
    response = [(b"found", amp.Boolean())]


class CheckResult(amp.Command):
    """
    The supervisor checked backend C{name}: the worker's pool counts the
    result towards C{rise} and C{fall} as if it had run the check itself.
    """

    arguments = [(b"name", amp.Unicode()), (b"ok", amp.Boolean()), (b"why", amp.Unicode())]
    requiresAnswer = False


# -- worker to supervisor ------------------------------------------------------


class Report(amp.Command):
    """
    Events and log events, one JSON text a line.
    """

    arguments = [(b"lines", BigBytes())]
    requiresAnswer = False


#: The field of a forwarded log event that holds its message, formatted by
#: the worker (whose objects the supervisor does not have).
FORMATTED = "log_text"


def eventLine(method: str, arguments: tuple) -> str:
    """
    The report line of one L{ftpproxy.events.IProxyEvents} call.
    """
    return json.dumps([method, list(arguments)])
