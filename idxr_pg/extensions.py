"""Make sure the target PostgreSQL can provide the `vector` and `ltree` extensions, and, where
it can, the C capture trigger (`idxr_capture`, optional).

`make setup` runs `idxr-pg doctor --install-missing`. On a local Debian server a missing
pgvector is built from Debian's own source package (the `trixie` suite carries pgvector
0.8); a remote or non-Debian server gets one clear message saying what to install. The C
capture trigger is built from the package's own sources (`idxr_pg.capture.library`); where
that is impossible capture uses its plpgsql functions and doctor says why.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from idxr_pg import local_build
from idxr_pg.capture import library
from idxr_pg.db import catalog
from idxr_pg.db.capture import C_EXTENSION
from idxr_pg.db.connection import connect
from idxr_pg.errors import IdxrError

REQUIRED_EXTENSIONS = ("vector", "ltree")
OPTIONAL_EXTENSIONS = (C_EXTENSION,)  # capture falls back to plpgsql without it
MIN_SERVER_VERSION = 150000
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}
TRIXIE_SOURCES = Path("/etc/apt/sources.list.d/idxr-pg-trixie-src.sources")
TRIXIE_SOURCES_TEXT = """\
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


class ExtensionSetupError(IdxrError):
    """The server lacks an extension and idxr-pg cannot install it here."""


@dataclass(frozen=True)
class ServerFacts:
    version_num: int
    version: str
    host: str
    available: dict[str, str | None]  # extension -> default version (None: not available)

    @property
    def missing(self) -> list[str]:
        return [name for name in REQUIRED_EXTENSIONS if self.available.get(name) is None]

    @property
    def major(self) -> int:
        return self.version_num // 10000

    @property
    def is_local(self) -> bool:
        return self.host in LOCAL_HOSTS or self.host.startswith("/")


def inspect_server(database_url: str) -> ServerFacts:
    with connect(database_url, vector=False) as conn:  # vector may be what is missing
        version_num, version = catalog.server_version(conn)
        available = catalog.available_extensions(conn, REQUIRED_EXTENSIONS + OPTIONAL_EXTENSIONS)
        host = conn.info.host or ""
    return ServerFacts(version_num, version, host, available)


def install_pgvector_from_debian_source(major: int) -> None:
    """Build pgvector from Debian trixie's source package against the local server's headers."""
    if os.geteuid() != 0:
        raise ExtensionSetupError(
            "pgvector is missing and installing it needs root: run `sudo make setup`, or "
            f"install the package postgresql-{major}-pgvector yourself."
        )
    if not TRIXIE_SOURCES.exists():
        TRIXIE_SOURCES.write_text(TRIXIE_SOURCES_TEXT)
    local_build.apt_install(major, "dpkg-dev")
    with tempfile.TemporaryDirectory(prefix="idxr-pgvector-") as work:
        workdir = Path(work)
        local_build.run(["apt-get", "source", "-qq", "pgvector"], cwd=workdir)
        sources = [p for p in workdir.iterdir() if p.is_dir() and p.name.startswith("pgvector")]
        if not sources:
            raise ExtensionSetupError("apt-get source pgvector produced no source folder")
        pg_config = local_build.pg_config(major)
        local_build.run(["make", f"PG_CONFIG={pg_config}", "-j2"], cwd=sources[0])
        local_build.run(["make", f"PG_CONFIG={pg_config}", "install"], cwd=sources[0])


def ensure_extensions(database_url: str, *, install_missing: bool) -> ServerFacts:
    """Check the server; install pgvector locally when allowed. Raises ExtensionSetupError."""
    facts = inspect_server(database_url)
    if facts.version_num < MIN_SERVER_VERSION:
        raise ExtensionSetupError(
            f"PostgreSQL {facts.version} is too old: idxr-pg needs PostgreSQL 15 or newer."
        )
    missing = facts.missing
    if not missing:
        return facts
    if "ltree" in missing:
        raise ExtensionSetupError(
            "the ltree extension is not available on the server: install PostgreSQL's contrib "
            f"modules (Debian: postgresql-contrib / postgresql-{facts.major})."
        )
    if not install_missing or not facts.is_local or not local_build.is_debian():
        where = "this server" if facts.is_local else f"the server at {facts.host}"
        raise ExtensionSetupError(
            f"the vector extension (pgvector >= 0.8) is not available on {where}: install it "
            f"(Debian/Ubuntu: postgresql-{facts.major}-pgvector; others: "
            "https://github.com/pgvector/pgvector#installation), then run this again."
        )
    print(
        f"pgvector is missing on the local PostgreSQL {facts.major}; building it from Debian's source package"
    )
    install_pgvector_from_debian_source(facts.major)
    facts = inspect_server(database_url)
    if facts.missing:
        raise ExtensionSetupError(
            f"pgvector was built but PostgreSQL still lacks: {', '.join(facts.missing)}"
        )
    return facts


def ensure_capture_library(
    database_url: str, facts: ServerFacts, *, install_missing: bool
) -> library.LibraryStatus:
    """Check that the server has the C capture trigger's library; build and install it on a
    local Debian server when allowed (root). Never raises: without it capture uses plpgsql,
    and the status says why."""
    if facts.available.get(C_EXTENSION) is not None:
        return library.LibraryStatus(True)
    by_hand = (
        f"build {library.source_dir()} with PGXS as root on the server's machine: "
        "make PG_CONFIG=<its pg_config> install"
    )
    if not facts.is_local:
        return library.LibraryStatus(False, f"the server at {facts.host} is not local: {by_hand}")
    if not install_missing:
        return library.LibraryStatus(
            False, "not built: run `idxr-pg doctor --install-missing` (root) or `make setup`"
        )
    if not local_build.is_debian():
        return library.LibraryStatus(False, f"not a Debian machine: {by_hand}")
    if os.geteuid() != 0:
        return library.LibraryStatus(False, "building it needs root: run `sudo make setup`")
    print(f"{C_EXTENSION} (the C capture trigger) is missing; building it with PGXS")
    try:
        library.build_and_install(facts.major)
    except (subprocess.CalledProcessError, OSError) as exc:
        return library.LibraryStatus(False, f"the build failed: {exc}")
    if inspect_server(database_url).available.get(C_EXTENSION) is None:
        return library.LibraryStatus(False, "built and installed, but the server does not list it")
    return library.LibraryStatus(True)
