"""Every SQL, shell and Python example in README.md runs against a demo database (issue 8).

Each fenced ```sql, ```sh and ```python block must be preceded by a marker line:
`<!-- readme-test: run -->` (run here) or `<!-- readme-test: skip — <which test covers it> -->`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from idxr_pg.demo.run import Demo
from tests.conftest import with_dbname
from tests.integration.worker_support import ROOT

BLOCK = re.compile(
    r"(?P<marker><!-- readme-test: [^\n]*-->\n)?```(?P<lang>sql|sh|python)\n(?P<body>.*?)```", re.S
)
ROLES = ("idxr_indexer", "idxr_analyst")  # the README's login roles; the group roles stay


def readme_blocks() -> list[tuple[str, str, str]]:
    text = (ROOT / "README.md").read_text()
    return [(m["lang"], m["body"], m["marker"] or "") for m in BLOCK.finditer(text)]


def test_every_example_is_marked_run_or_covered_elsewhere():
    blocks = readme_blocks()
    assert len(blocks) >= 10
    for lang, body, marker in blocks:
        assert marker, f"README {lang} block has no readme-test marker:\n{body}"
        if "skip" in marker:
            covered_by = re.findall(r"tests/[\w/]+\.py", marker)
            assert covered_by, f"a skipped README block must name the test covering it: {marker}"
            for path in covered_by:
                assert (ROOT / path).exists(), path


LEFTOVER_DATABASES_SQL = """
SELECT DISTINCT d.datname FROM pg_catalog.pg_shdepend s
  JOIN pg_catalog.pg_database d ON d.oid = s.dbid
  JOIN pg_catalog.pg_roles r ON r.oid = s.refobjid
 WHERE r.rolname = %s
"""


def drop_leftover_roles(admin: psycopg.Connection, server_url: str) -> None:
    """Drop the README's login roles left by an interrupted run, with whatever they still own
    in databases that run left behind (DROP ROLE refuses while a database holds their objects)."""
    for role in ROLES:
        for (database,) in admin.execute(LEFTOVER_DATABASES_SQL, [role]).fetchall():
            with psycopg.connect(with_dbname(server_url, database), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def demo_env(pg_server_url, session_id, tmp_path_factory):
    """The demo application, installed and backfilled, as the README's examples expect."""
    database = f"idxr_test_{session_id}_readme"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        drop_leftover_roles(admin, pg_server_url)
    workdir = tmp_path_factory.mktemp("readme-demo")
    demo = Demo(pg_server_url, 40, workdir, database)
    demo.create_application()
    demo.install()
    demo.backfill()
    env = {
        **os.environ,
        "IDXR_DATABASE_URL": demo.url,
        "IDXR_CONFIG": str(demo.config_path),
        "HF_HUB_OFFLINE": "1",
        "IDXR_ALLOW_SUPERUSER": "1",  # the examples run as postgres (README: least privilege)
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    yield env
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        for role in ROLES:
            exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            if exists:
                with psycopg.connect(demo.url, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


RUN_BLOCKS = [
    (lang, body) for lang, body, marker in readme_blocks() if "readme-test: run" in marker
]


@pytest.mark.model
@pytest.mark.parametrize(
    ("lang", "body"), RUN_BLOCKS, ids=[f"{i}-{lang}" for i, (lang, _) in enumerate(RUN_BLOCKS)]
)
def test_readme_example_runs(demo_env, lang, body):
    if lang == "sql":
        command = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", demo_env["IDXR_DATABASE_URL"]]
    elif lang == "sh":
        command = ["bash", "-euo", "pipefail"]
    else:
        command = [sys.executable, "-"]
    result = subprocess.run(
        command, input=body, capture_output=True, text=True, cwd=ROOT, env=demo_env, timeout=300
    )
    assert result.returncode == 0, f"{lang} example failed:\n{body}\n--- stderr:\n{result.stderr}"
    if re.search(
        r"idxr\.(search|search_entities|similar_to)\(|idxr-pg search|idxr_pg\.search", body
    ):
        assert "(0 rows)" not in result.stdout and result.stdout.strip(), f"no results for:\n{body}"
