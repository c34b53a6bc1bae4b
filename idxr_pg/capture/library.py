"""The C capture trigger's library: build and install it on a local Debian server (PGXS).

The sources ship in the package (``idxr_pg/capture/c``: idxr_capture.c, the extension's control
and SQL files, a PGXS Makefile). ``idxr-pg doctor --install-missing`` (run by ``make setup``)
builds them against the local server's headers (Debian: ``postgresql-server-dev-<major>``,
installed with ``build-essential`` by `idxr_pg.local_build`, as for pgvector's build) and
installs the library and extension files into the server's directories (root).
``triggers install`` then creates the extension in schema idxr (`idxr_pg.capture.triggers`).

Nothing here is required: where the build is impossible (a remote or non-Debian server, no
root), capture keeps its plpgsql functions and `idxr_pg.extensions.ensure_capture_library`
says why.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from idxr_pg import local_build
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
    pg_config = local_build.pg_config(major)
    if not _server_headers(pg_config) or shutil.which("make") is None:
        local_build.apt_install(major)
    with tempfile.TemporaryDirectory(prefix="idxr-capture-") as work:
        build = Path(work)
        for name in SOURCE_FILES:
            shutil.copyfile(source_dir() / name, build / name)
        local_build.run(["make", f"PG_CONFIG={pg_config}"], cwd=build)
        local_build.run(["make", f"PG_CONFIG={pg_config}", "install"], cwd=build)
