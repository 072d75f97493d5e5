"""
Small helpers for test files: random content and digests.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

MiB = 1024 * 1024


def writeRandomFile(path: Path, size: int) -> Path:
    """
    Write C{size} random bytes to C{path}; random so that a file from one
    backend can never be mistaken for another's.
    """
    with path.open("wb") as f:
        remaining = size
        while remaining:
            chunk = min(remaining, MiB)
            f.write(os.urandom(chunk))
            remaining -= chunk
    return path


def sha256File(path: Path) -> str:
    """
    Hex SHA-256 of a file, read in chunks.
    """
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256Bytes(data: bytes) -> str:
    """
    Hex SHA-256 of C{data}.
    """
    return hashlib.sha256(data).hexdigest()
