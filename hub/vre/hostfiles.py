"""What the hub keeps on its host besides databases: secrets created on first use, and the URLs of
the unix sockets that its services and sessions talk over."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import quote


def unix_url(path: str | Path) -> str:
    """An ``http+unix://`` URL for a socket path (the form JupyterHub and its proxy accept)."""
    return "http+unix://" + quote(str(path), safe="")


def read_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """A secret kept in a root-only file, created on first use (never in the repository)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(nbytes))
    return path.read_text().strip()
