"""
A small raw-socket asyncio FTP client for load: session rate and idle sessions.

It speaks just enough FTP (USER, PASS, EPSV, LIST, QUIT) with the loop's
low-level socket calls, so that one process can drive thousands of sessions
per second without becoming the bottleneck the way a full client library
would.  run.py starts it as a child process and reads one JSON line from it.

Modes:
  - C{rate}: C{--concurrency} workers each run whole sessions (connect,
    login, EPSV, LIST, QUIT) back to back until C{--duration} has passed;
    reports sessions/s and latency percentiles.
  - C{idle}: open C{--count} logged-in sessions, print C{READY ...}, wait for
    a line on stdin, then QUIT them all; reports how many succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import resource
import socket
import sys
import time
from collections import deque

EPSV_PORT = re.compile(rb"\(\|\|\|(\d+)\|\)")


class FTPError(Exception):
    """
    The server answered something the session did not expect.
    """


class ControlProtocol(asyncio.Protocol):
    """
    The control connection of one session: send commands, hand out whole
    replies.  A protocol keeps its socket registered with the loop for its
    whole life, which costs far fewer system calls than C{sock_recv}.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.lines: list[bytes] = []
        self.replies: deque[tuple[int, bytes]] = deque()
        self.waiter: asyncio.Future | None = None
        self.lost: Exception | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                break
            line = self.buffer[:end].rstrip(b"\r")
            self.buffer = self.buffer[end + 1 :]
            self.lineReceived(line)

    def lineReceived(self, line: bytes) -> None:
        # A reply ends on "ddd " (RFC 959 4.2); "ddd-" opens a multi-line one.
        self.lines.append(line)
        first = self.lines[0]
        if first[3:4] == b"-" and not (
            len(self.lines) > 1 and line[:3] == first[:3] and line[3:4] == b" "
        ):
            return
        text = b"\n".join(self.lines)
        self.lines = []
        if not first[:3].isdigit():
            self.fail(FTPError(f"bad reply {text!r}"))
            return
        self.replies.append((int(first[:3]), text))
        self.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(FTPError("control connection closed"))

    def fail(self, reason: Exception) -> None:
        if self.lost is None:
            self.lost = reason
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def readReply(self) -> tuple[int, bytes]:
        while not self.replies:
            if self.lost is not None:
                raise self.lost
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None
        return self.replies.popleft()

    async def command(self, line: str, expect: tuple[int, ...]) -> bytes:
        assert self.transport is not None
        self.transport.write(line.encode() + b"\r\n")
        code, text = await self.readReply()
        if code not in expect:
            raise FTPError(f"{line.split()[0]} -> {text!r}")
        return text

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class DataProtocol(asyncio.Protocol):
    """
    A data connection that only counts what arrives until the server closes.
    """

    def __init__(self, done: asyncio.Future) -> None:
        self.done = done
        self.size = 0

    def data_received(self, data: bytes) -> None:
        self.size += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.size)


async def openSocket(
    loop: asyncio.AbstractEventLoop, host: str, port: int
) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def login(
    loop: asyncio.AbstractEventLoop, args: argparse.Namespace, target: tuple[str, int]
) -> ControlProtocol:
    sock = await openSocket(loop, *target)
    try:
        _, control = await loop.create_connection(ControlProtocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        code, text = await control.readReply()
        if code != 220:
            raise FTPError(f"banner {text!r}")
        await control.command(f"USER {args.user}", (331, 230))
        await control.command(f"PASS {args.password}", (230,))
    except BaseException:
        control.close()
        raise
    return control


async def listOverEPSV(
    loop: asyncio.AbstractEventLoop, control: ControlProtocol, host: str
) -> int:
    """
    EPSV, connect the data leg, LIST, drain it; returns the listing's size.
    """
    text = await control.command("EPSV", (229,))
    match = EPSV_PORT.search(text)
    if match is None:
        raise FTPError(f"EPSV reply {text!r}")
    sock = await openSocket(loop, host, int(match.group(1)))
    done = loop.create_future()
    try:
        transport, _ = await loop.create_connection(lambda: DataProtocol(done), sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        await control.command("LIST", (125, 150))
        size = await done
    finally:
        transport.abort()
    code, text = await control.readReply()
    if code != 226:
        raise FTPError(f"after LIST {text!r}")
    return size


async def quitSession(control: ControlProtocol) -> None:
    try:
        await control.command("QUIT", (221,))
    finally:
        control.close()


async def oneSession(
    loop: asyncio.AbstractEventLoop, args: argparse.Namespace, target: tuple[str, int]
) -> None:
    control = await login(loop, args, target)
    try:
        await listOverEPSV(loop, control, target[0])
    except BaseException:
        control.close()
        raise
    await quitSession(control)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


async def runRate(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + args.duration
    lastEnd = start
    turns = itertools.count()

    async def worker() -> None:
        nonlocal lastEnd
        while time.perf_counter() < deadline:
            if args.max_sessions and len(latencies) + len(errors) >= args.max_sessions:
                return
            target = args.target[next(turns) % len(args.target)]
            begin = time.perf_counter()
            try:
                await asyncio.wait_for(oneSession(loop, args, target), args.timeout)
            except (OSError, FTPError, asyncio.TimeoutError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                # Do not spin on a refusing server.
                await asyncio.sleep(0.01)
                continue
            end = time.perf_counter()
            latencies.append(end - begin)
            lastEnd = max(lastEnd, end)

    cpuBefore = time.process_time()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = max(lastEnd, time.perf_counter()) - start
    cpu = time.process_time() - cpuBefore
    return {
        "sessions": len(latencies),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "elapsed": elapsed,
        "rate": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "client_cpu": cpu / elapsed if elapsed > 0 else 0.0,
    }


async def runIdle(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(args.concurrency)
    errors: list[str] = []

    async def openOne(index: int) -> ControlProtocol | None:
        target = args.target[index % len(args.target)]
        async with gate:
            try:
                return await asyncio.wait_for(login(loop, args, target), args.timeout)
            except (OSError, FTPError, asyncio.TimeoutError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                return None

    if args.wait_to_start:
        # Lets the harness take its baseline with this process already
        # mapping the shared libraries it shares with the servers (PSS).
        sys.stdout.write("WAITING\n")
        sys.stdout.flush()
        await loop.run_in_executor(None, sys.stdin.readline)
    start = time.perf_counter()
    opened = await asyncio.gather(*(openOne(i) for i in range(args.count)))
    sessions = [c for c in opened if c is not None]
    openSeconds = time.perf_counter() - start
    sys.stdout.write(f"READY {len(sessions)} {len(errors)}\n")
    sys.stdout.flush()
    await loop.run_in_executor(None, sys.stdin.readline)

    quitErrors = 0

    async def closeOne(control: ControlProtocol) -> None:
        nonlocal quitErrors
        async with gate:
            try:
                await asyncio.wait_for(quitSession(control), args.timeout)
            except (OSError, FTPError, asyncio.TimeoutError):
                quitErrors += 1
                control.close()

    await asyncio.gather(*(closeOne(c) for c in sessions))
    return {
        "sessions": len(sessions),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "open_seconds": openSeconds,
        "quit_errors": quitErrors,
    }


def parseTarget(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def raiseFileLimit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def runLoop(coroutine, which: str):
    """
    Run on uvloop when it is there (it halves the client's CPU per session,
    which matters on a 2-core machine shared with the servers under test).
    """
    if which != "asyncio":
        try:
            import uvloop
        except ImportError:
            if which == "uvloop":
                raise
        else:
            return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("rate", "idle"))
    parser.add_argument(
        "--target", action="append", required=True, type=parseTarget,
        help="HOST:PORT; repeat to spread sessions round-robin over servers")
    parser.add_argument("--user", default="bench")
    parser.add_argument("--password", default="bench")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-sessions", type=int, default=0)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--wait-to-start", action="store_true",
                        help="idle: print WAITING and wait for a line before opening")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args(argv)
    raiseFileLimit()
    runner = runRate if args.mode == "rate" else runIdle
    result = runLoop(runner(args), args.loop)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
