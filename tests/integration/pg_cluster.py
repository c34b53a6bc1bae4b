"""Throw-away PostgreSQL clusters for the replica tests: a primary of the test's own and a
streaming hot standby made from it with ``pg_basebackup``, both in one temporary folder, on
free ports, listening on 127.0.0.1 only.

The local server (the one tests/conftest.py uses) is left alone: its pg_hba.conf admits no
replication connection, and a base backup of it would copy every other database on it. A
primary made with ``initdb -A trust`` admits replication from 127.0.0.1 and holds only what
the test puts there. The server binaries come from Debian's ``/usr/lib/postgresql/N/bin``
(the newest version with pgvector and ltree installed) or ``IDXR_PG_BINDIR``. As root, every
server command runs as the ``postgres`` user (initdb and postgres refuse root).

`Cluster.stop` is immediate (``pg_ctl stop -m immediate``, then the postmaster's own pid);
`clusters` stops them all and removes the folder however the test ends.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

SERVER_TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
REQUIRED_EXTENSIONS = ("vector", "ltree")
COMMAND_TIMEOUT = 120  # seconds for any one initdb, pg_ctl or pg_basebackup
OWNER = "postgres"
# Small and quick: these clusters live for one test. fsync off is safe for a throw-away
# cluster and makes initdb, checkpoints and the base backup fast on a loaded machine.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "shared_buffers": "32MB",
    "max_connections": "40",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "on",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "hot_standby": "on",
    "logging_collector": "off",
}


class ClusterUnavailable(Exception):
    """This machine cannot run a second cluster (the message says why)."""


def find_bindir() -> Path:
    """The folder of server binaries to use, or `ClusterUnavailable` saying what is missing."""
    explicit = os.environ.get("IDXR_PG_BINDIR")
    candidates = (
        [Path(explicit)]
        if explicit
        else sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
    )
    reasons = []
    for bindir in candidates:
        missing = [tool for tool in SERVER_TOOLS if not (bindir / tool).exists()]
        if missing:
            reasons.append(f"{bindir} lacks {', '.join(missing)}")
            continue
        sharedir = subprocess.run(
            [str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True
        ).stdout.strip() or str(Path("/usr/share/postgresql") / bindir.parent.name)
        absent = [
            name
            for name in REQUIRED_EXTENSIONS
            if not (Path(sharedir) / "extension" / f"{name}.control").exists()
        ]
        if absent:
            reasons.append(f"{bindir}: extensions {', '.join(absent)} not installed")
            continue
        return bindir
    raise ClusterUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) with pgvector and ltree "
        "on this machine, so no second cluster can run: "
        + ("; ".join(reasons) or "nothing under /usr/lib/postgresql/*/bin (set IDXR_PG_BINDIR)")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Clusters:
    """The tools and the folder the clusters of one test share."""

    bindir: Path
    root: Path
    as_owner: bool  # running as root: server commands run as OWNER
    started: list[Cluster] = field(default_factory=list)

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a server tool (as OWNER when root); raise with its output when it fails."""
        command = [str(self.bindir / tool), *args]
        kwargs: dict[str, object] = {"user": OWNER, "group": OWNER} if self.as_owner else {}
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            cwd=self.root,
            **kwargs,  # type: ignore[arg-type]
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def primary(self, name: str = "primary") -> Cluster:
        """A new cluster (initdb, trust authentication, replication allowed from 127.0.0.1),
        started."""
        datadir = self.root / name
        self.run(
            "initdb", "-D", str(datadir), "-A", "trust", "-U", OWNER, "--no-sync", "-E", "UTF8"
        )
        return self._start(Cluster(self, name, datadir))

    def standby(self, primary: Cluster, name: str = "standby") -> Cluster:
        """A streaming hot standby of ``primary``: a base backup with its WAL, writing the
        recovery settings (``-R``: standby.signal, primary_conninfo), started."""
        datadir = self.root / name
        self.run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", OWNER,
            "-D", str(datadir), "-R", "-X", "stream", "-c", "fast", "--no-sync",
        )  # fmt: skip
        standby = self._start(Cluster(self, name, datadir))
        wait_for_streaming(primary.url(), name)
        return standby

    def _start(self, cluster: Cluster) -> Cluster:
        last: Exception | None = None
        for _ in range(3):  # a free port can be taken between choosing and binding it
            cluster.port = free_port()
            options = {
                **SETTINGS,
                "port": str(cluster.port),
                "unix_socket_directories": str(self.root),
            }
            option_text = " ".join(f"-c {key}={value}" for key, value in options.items())
            try:
                self.run(
                    "pg_ctl", "start", "-D", str(cluster.datadir), "-l", str(cluster.log),
                    "-w", "-t", str(COMMAND_TIMEOUT), "-o", option_text,
                )  # fmt: skip
            except RuntimeError as exc:
                last = exc
                continue
            self.started.append(cluster)
            return cluster
        raise RuntimeError(f"{cluster.name} did not start: {last}\n{cluster.log_tail()}")

    def stop_all(self) -> None:
        for cluster in reversed(self.started):
            cluster.stop()
        self.started.clear()


@dataclass
class Cluster:
    clusters: Clusters
    name: str
    datadir: Path
    port: int = 0

    @property
    def log(self) -> Path:
        return self.clusters.root / f"{self.name}.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{OWNER}@127.0.0.1:{self.port}/{dbname}"

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Stop at once; if pg_ctl cannot, signal the postmaster of this data folder."""
        with contextlib.suppress(Exception):
            self.clusters.run("pg_ctl", "stop", "-D", str(self.datadir), "-m", "immediate", "-w")
            return
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)


def wait_for_streaming(primary_url: str, standby_name: str, timeout: float = 60.0) -> None:
    """Wait until the primary reports a WAL sender in state ``streaming`` (the standby's
    WAL receiver connects a moment after the standby accepts connections)."""
    deadline = time.monotonic() + timeout
    state = None
    with psycopg.connect(primary_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT state FROM pg_stat_replication").fetchone()
            state = row[0] if row else None
            if state == "streaming":
                return
            time.sleep(0.05)
    raise AssertionError(
        f"{standby_name} is not streaming from the primary after {timeout:.0f} s "
        f"(WAL sender state: {state or 'none'})"
    )


def wait_for_replay(primary_url: str, standby_url: str, timeout: float = 60.0) -> str:
    """Wait until the standby has replayed everything the primary has written so far; the
    primary's LSN it waited for. Raises `AssertionError` after ``timeout`` seconds."""
    with psycopg.connect(primary_url, autocommit=True) as conn:
        target = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    deadline = time.monotonic() + timeout
    replayed = None
    with psycopg.connect(standby_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            replayed, done = conn.execute(
                "SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_replay_lsn() >= %s::pg_lsn",
                [target],
            ).fetchone()
            if done:
                return target
            time.sleep(0.05)
    raise AssertionError(
        f"the standby replayed WAL to {replayed} but not to the primary's {target} "
        f"within {timeout:.0f} s"
    )


def server_owner() -> pwd.struct_passwd | None:
    """The user to run server commands as: OWNER when running as root, else None (ourselves).
    `ClusterUnavailable` when root has no such user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OWNER)
    except KeyError:
        raise ClusterUnavailable(
            f"running as root and there is no {OWNER!r} user to run initdb and postgres as "
            "(they refuse root), so no second cluster can run"
        ) from None


def check_available() -> None:
    """Raise `ClusterUnavailable` (saying why) unless this machine can run a second cluster."""
    find_bindir()
    server_owner()


@contextlib.contextmanager
def clusters() -> Iterator[Clusters]:
    """A folder for clusters; every cluster started in it is stopped and the folder removed
    at the end, whatever happens. `ClusterUnavailable` when this machine cannot run one."""
    bindir = find_bindir()
    owner = server_owner()
    as_owner = owner is not None
    root = Path(tempfile.mkdtemp(prefix="idxr-clusters-"))
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        made = Clusters(bindir, root, as_owner)
        try:
            yield made
        finally:
            made.stop_all()
    finally:
        shutil.rmtree(root, ignore_errors=True)
