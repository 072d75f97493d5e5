"""
What the README shows works: its configuration file example is a valid
configuration, and its embedding example, run as it is written (only its
listening port and passive range are swapped for free ones), serves in front
of two real FTP servers.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from ftpproxy.settings.config import configFromMapping, makeConfig
from ftpproxy.settings.options import OPTIONS

from tests.support.clients import curl, ftpURL
from tests.support.processes import readLog, stopProcess
from tests.support.proxy import freePort, freePortRange, waitUntilListening

README = Path(__file__).resolve().parents[1] / "README.md"


def embeddingExample() -> str:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    examples = [b for b in blocks if "makeService(config, reactor)" in b]
    assert len(examples) == 1, "the README must hold exactly one embedding example"
    return examples[0]


def test_readmeEmbeddingExampleServes(tmp_path: Path, twoBackends) -> None:
    example = embeddingExample()
    port = freePort()
    passive = freePortRange()
    assert "tcp:2121:" in example and "PortRange(50000, 50099)" in example
    script = example.replace("tcp:2121:", f"tcp:{port}:").replace(
        "PortRange(50000, 50099)", f"PortRange({passive.start}, {passive.stop - 1})"
    )
    path = tmp_path / "embed.py"
    path.write_text(script)
    log = tmp_path / "embed.log"
    addresses = [f"{b.host}:{b.port}" for b in twoBackends]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(path), *addresses],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        waitUntilListening(process, "127.0.0.1", port, log)
        served = {
            curl(ftpURL("127.0.0.1", port, "whoami.txt")).stdout.decode().strip()
            for _ in range(2)
        }
    finally:
        stopProcess(process)
    assert served == {b.name for b in twoBackends}
    assert "Traceback" not in readLog(log)


def test_readmeConfigurationExampleIsValid() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README must show a configuration file"
    config = makeConfig(**configFromMapping(tomllib.loads(blocks[0]), "README"))
    assert [b.name for b in config.backends] == ["alfresco-1", "ftps-node"]
    assert config.backends[1].tls == "implicit"
    assert config.health is not None and config.health.kind == "banner"
    assert config.policyOptions["table"] == {"alice": "alfresco-1"}
    [legacy] = config.listeners
    assert (legacy.label, legacy.tlsProfile) == ("legacy", "legacy")
    assert config.tlsProfile("legacy").sessionReuse == "required"


def test_readmeConfigurationExampleShowsEveryKey() -> None:
    """
    The README's file example shows every top-level key but the demo's
    (C{demo} and its TLS rig).
    """
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    shown = set(tomllib.loads(blocks[0]))
    assert shown == {option.key for option in OPTIONS} - {"demo", "tls_rig", "tls_rig_ports"}


def test_readmeTestingExampleRuns() -> None:
    """
    The README's example of L{ftpproxy.testing} runs as it is written, in
    this process, without a socket.
    """
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    [example] = [b for b in blocks if "ftpproxy.testing" in b]
    exec(compile(example, "README.md", "exec"), {})
