"""Building server-side code on the local Debian machine (``doctor --install-missing``).

One place for what pgvector's build (`idxr_pg.extensions`) and the C capture trigger's
(`idxr_pg.capture.library`) both need: running a set-up command where the user sees it, the
build tools from apt, and the local server's ``pg_config``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["BUILD_PACKAGES", "apt_install", "is_debian", "pg_config", "run"]

BUILD_PACKAGES = ("build-essential",)
"""What a PGXS build needs besides the server headers (``postgresql-server-dev-<major>``)."""


def is_debian() -> bool:
    return Path("/etc/debian_version").exists() and shutil.which("apt-get") is not None


def pg_config(major: int) -> str:
    """The ``pg_config`` of the local PostgreSQL ``major`` (Debian's layout)."""
    return f"/usr/lib/postgresql/{major}/bin/pg_config"


def run(command: list[str], cwd: Path | None = None) -> None:
    """Run a set-up command, printed first; raises `subprocess.CalledProcessError`."""
    print("  $", " ".join(command), flush=True)
    subprocess.run(
        command, cwd=cwd, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    )


def apt_install(major: int, *extra: str) -> None:
    """``apt-get update`` and install the server headers of ``major``, the build tools and
    ``extra``."""
    run(["apt-get", "update", "-qq"])
    run(
        [
            "apt-get",
            "install",
            "-y",
            "-qq",
            f"postgresql-server-dev-{major}",
            *BUILD_PACKAGES,
            *extra,
        ]
    )
