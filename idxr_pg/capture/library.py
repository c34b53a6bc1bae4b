"""The C capture trigger's library: build and install it on a local Debian server (PGXS).

The sources ship in the package (``idxr_pg/capture/c``: idxr_capture.c, the extension's control
and SQL files, a PGXS Makefile). ``idxr-pg doctor --install-missing`` (run by ``make setup``)
builds them against the local server's headers (Debian: ``postgresql-server-dev-<major>``,
installed with ``build-essential`` the way `idxr_pg.extensions` installs pgvector's build
tools) and installs the library and extension files into the server's directories (root).
``triggers install`` then creates the extension in schema idxr (`idxr_pg.capture.triggers`).

Nothing here is required: where the build is impossible (a remote or non-Debian server, no
root), capture keeps its plpgsql functions and `capture_library_status` says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from idxr_pg.db.capture import C_EXTENSION

__all__ = ["SOURCE_FILES", "LibraryStatus", "build_and_install", "source_dir"]

SOURCE_FILES = (
    "Makefile",
    "idxr_capture.c",
    "idxr_capture.control",
    "idxr_capture--1.0.sql",
)


@dataclass(frozen=True)
class LibraryStatus:
    """Whether the server can create the extension; if not, why (one line)."""

    available: bool
    reason: str | None = None

    def describe(self) -> str:
        if self.available:
            return f"{C_EXTENSION} (C capture trigger) available: capture uses it"
        return (
            f"{C_EXTENSION} (C capture trigger) not available: capture uses plpgsql ({self.reason})"
        )


def source_dir() -> Path:
    """The folder of the C sources inside the installed package."""
    return Path(str(resources.files("idxr_pg.capture").joinpath("c")))


def _run(command: list[str], cwd: Path | None = None) -> None:
    print("  $", " ".join(command), flush=True)
    subprocess.run(
        command, cwd=cwd, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    )


def _server_headers(pg_config: str) -> bool:
    if not Path(pg_config).exists():
        return False
    include = subprocess.run(
        [pg_config, "--includedir-server"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return bool(include) and (Path(include) / "postgres.h").exists()


def build_and_install(major: int) -> None:
    """Build the library against the local PostgreSQL ``major`` and install it (root).

    Installs ``postgresql-server-dev-<major>`` and ``build-essential`` first when the server
    headers or ``make`` are missing. The build runs in a temporary copy of the sources: the
    installed package may be read-only. Raises `subprocess.CalledProcessError` or OSError.
    """
    pg_config = f"/usr/lib/postgresql/{major}/bin/pg_config"
    if not _server_headers(pg_config) or shutil.which("make") is None:
        _run(["apt-get", "update", "-qq"])
        _run(
            [
                "apt-get",
                "install",
                "-y",
                "-qq",
                f"postgresql-server-dev-{major}",
                "build-essential",
            ]
        )
    with tempfile.TemporaryDirectory(prefix="idxr-capture-") as work:
        build = Path(work)
        for name in SOURCE_FILES:
            shutil.copyfile(source_dir() / name, build / name)
        _run(["make", f"PG_CONFIG={pg_config}"], cwd=build)
        _run(["make", f"PG_CONFIG={pg_config}", "install"], cwd=build)
