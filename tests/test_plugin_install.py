"""
The twistd plugin is found after a real installation: C{pip install .} and
C{pip install -e .}, each into a fresh virtualenv, with twistd run from an
unrelated directory.

This installs the dependencies from the package index (or pip's cache), so
it takes a while; it is the only test that proves the packaging works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tests.support.proxy import PROJECT_ROOT

INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 60

# Never copied: repository metadata, caches and build artefacts.
EXCLUDED_PARTS = {
    ".git",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    ".mypy_cache",
    "build",
    "dist",
}
EXCLUDED_NAMES = {"dropin.cache"}


def projectFiles(root: Path) -> list[Path]:
    """
    The project's files, relative to C{root}: tracked and untracked ones that
    git does not ignore, without caches and build artefacts.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    files = []
    for name in filter(None, listed.split("\0")):
        path = Path(name)
        if EXCLUDED_PARTS.intersection(path.parts) or path.name in EXCLUDED_NAMES:
            continue
        if path.suffix == ".pyc" or any(p.endswith(".egg-info") for p in path.parts):
            continue
        if (root / path).is_file():
            files.append(path)
    return files


def copyProject(destination: Path) -> Path:
    """
    Copy the working tree's project files to C{destination}, so that building
    leaves no artefacts in the checkout.
    """
    for path in projectFiles(PROJECT_ROOT):
        target = destination / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / path, target)
    return destination


def cleanEnvironment() -> dict[str, str]:
    """
    The environment without anything that would put the checkout or another
    Python's packages on the path.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """
    Run C{argv}, failing the test with its output if it fails.
    """
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=cleanEnvironment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited with {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}",
            pytrace=False,
        )
    return result


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_twistdFindsPlugin(tmp_path: Path, editable: bool):
    """
    After installation, C{twistd --help} lists C{ftpproxy} and
    C{twistd ftpproxy --help} shows the proxy's options.
    """
    project = copyProject(tmp_path / "project")
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(environment)
    python = environment / "bin" / "python"
    twistd = environment / "bin" / "twistd"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    install = [str(python), "-m", "pip", "install", "-q"]
    install += ["-e", str(project)] if editable else [str(project)]
    run(install, cwd=elsewhere, timeout=INSTALL_TIMEOUT)

    location = run(
        [str(python), "-c", "import ftpproxy; print(ftpproxy.__file__)"],
        cwd=elsewhere,
        timeout=RUN_TIMEOUT,
    ).stdout.strip()
    if editable:
        assert Path(location).is_relative_to(project)
    else:
        assert Path(location).is_relative_to(environment)
        # The installed copy must not need the source tree.
        shutil.rmtree(project)

    usage = run([str(twistd), "--help"], cwd=elsewhere, timeout=RUN_TIMEOUT).stdout
    assert any(line.split()[:1] == ["ftpproxy"] for line in usage.splitlines()), usage

    ftpproxyHelp = run(
        [str(twistd), "ftpproxy", "--help"], cwd=elsewhere, timeout=RUN_TIMEOUT
    ).stdout
    for option in ("--listen", "--backend", "--passive-ports"):
        assert option in ftpproxyHelp
    assert not list(elsewhere.iterdir()), "twistd --help wrote files"
