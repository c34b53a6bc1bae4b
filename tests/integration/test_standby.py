"""Search on a real streaming hot standby (issue 18): workers write on the primary, searches
run anywhere.

One test sets up a primary cluster of its own and a standby made from it with
``pg_basebackup`` (tests/integration/pg_cluster.py: temporary folder, free ports, both stopped
and removed at the end). On the standby, read-only, with the real model: the search SQL
functions give the primary's answers, the Python API and ``idxr-pg search`` find the right
entity, the embedding cache reads what the primary stored and skips its own writes, and the
worker and a backfill are refused with a message naming the primary. Then an
insert, an update and a delete on the primary, indexed by ``idxr-pg worker --once`` there,
become what the standby's searches return once it has replayed the primary's WAL
(``pg_last_wal_replay_lsn``), and its index equals the primary's.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

import idxr_pg
from idxr_pg.config import load_config
from idxr_pg.db import migrations
from idxr_pg.db.catalog import read_only_reason
from idxr_pg.db.connection import connect
from idxr_pg.embedding import EmbeddingCache
from tests.integration.pg_cluster import (
    Cluster,
    ClusterUnavailable,
    check_available,
    clusters,
    wait_for_replay,
)
from tests.integration.worker_support import (
    ARTICLES_DDL,
    IDXR,
    actual_index,
    article_entity,
    execute,
    install_triggers,
    subprocess_env,
    write_config,
)

pytestmark = [pytest.mark.model, pytest.mark.slow]  # two clusters and ~20 CLI runs: about a minute

CLI_TIMEOUT = 180  # seconds for one idxr-pg subprocess (it loads the model)

ARTICLES = [
    (1, "Fibre broadband", "Symmetric fibre-optic internet connection for offices.", 5),
    (2, "Cloud backup", "Encrypted off-site copies of laptops and servers, kept for 90 days.", 40),
    (3, "Business phone", "Hosted VoIP telephony with voicemail and conference calls.", 12),
    (4, "Managed firewall", "Protects the office network from intrusions and malware.", 70),
]


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Cluster, Path]]:
    """(primary, standby, config path): articles indexed on the primary with the real model
    before the base backup."""
    try:
        check_available()
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    with clusters() as made:
        primary = made.primary()
        execute(primary.url(), "CREATE DATABASE app")
        url = primary.url("app")
        migrations.upgrade(url)
        migrations.set_embedding_dimensions(url, 384)
        execute(url, ARTICLES_DDL)
        config_path = write_config(
            tmp_path_factory.mktemp("standby") / "idxr.yaml", [article_entity()]
        )
        install_triggers(url, load_config(config_path))
        with psycopg.connect(url, autocommit=True) as conn:
            for row in ARTICLES:
                conn.execute(
                    "INSERT INTO articles (id, title, body, status, views)"
                    " VALUES (%s, %s, %s, 'published', %s)",
                    row,
                )
            conn.execute("INSERT INTO tags (article_id, name) VALUES (4, 'security')")
        worker_once(url, config_path)
        standby = made.standby(primary)
        yield primary, standby, config_path


def cli(url: str, config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IDXR, "--database-url", url, "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=subprocess_env(COLUMNS="200"),
    )


def worker_once(url: str, config_path: Path) -> None:
    result = cli(url, config_path, "worker", "--once")
    assert result.returncode == 0, result.stderr
    with psycopg.connect(url) as conn:
        pending = conn.execute("SELECT count(*) FROM idxr.queue").fetchone()[0]
    assert pending == 0


def sql_searches(url: str) -> dict[str, list[tuple]]:
    """The same SQL searches, by stored vectors (no model): field, entity, filtered, similar."""
    with connect(url, autocommit=True) as conn:
        (firewall,) = conn.execute(
            "SELECT embedding FROM idxr.search_index"
            " WHERE entity_kind = 'article' AND entity_id = '4' AND path = 'article.body'"
        ).fetchone()
        run = {
            "fields": ("SELECT entity_id, path::text, round(distance::numeric, 6) FROM"
                       " idxr.search(%s, NULL, 'article', 5) ORDER BY distance", [firewall]),
            "entities": ("SELECT entity_id, path::text, round(distance::numeric, 6) FROM"
                         " idxr.search_entities(%s, 'article.*', NULL, 3) ORDER BY distance",
                         [firewall]),
            "filtered": ("SELECT entity_id, path::text FROM idxr.search(%s, NULL, NULL, 10,"
                         " %s::jsonb) ORDER BY distance",
                         [firewall, json.dumps([{"path": "article.views", "op": ">", "value": 30}])]),
            "similar": ("SELECT entity_id, path::text FROM"
                        " idxr.similar_to('article', '4', 'article.body', 3) ORDER BY distance",
                        []),
        }  # fmt: skip
        return {name: conn.execute(q, p).fetchall() for name, (q, p) in run.items()}


def index_rows(url: str) -> set[tuple]:
    return actual_index(url, "article")


def test_search_runs_on_a_streaming_standby_and_follows_the_primary(replica):
    primary, standby, config_path = replica
    primary_url, standby_url = primary.url("app"), standby.url("app")
    config = load_config(config_path)

    # A real standby: in recovery, streaming from the primary, refusing writes.
    with psycopg.connect(standby_url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        assert read_only_reason(conn) is not None
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO articles (id, title) VALUES (99, 'nope')")
    with psycopg.connect(primary.url(), autocommit=True) as conn:
        assert conn.execute("SELECT state FROM pg_stat_replication").fetchone() == ("streaming",)
        assert read_only_reason(conn) is None
    wait_for_replay(primary_url, standby_url)
    assert index_rows(standby_url) == index_rows(primary_url) != set()

    # The SQL functions answer on the standby exactly as on the primary.
    on_standby = sql_searches(standby_url)
    assert on_standby == sql_searches(primary_url)
    assert on_standby["fields"][0] == ("4", "article.body", 0)
    assert [row[0] for row in on_standby["entities"]][0] == "4"
    assert {row[0] for row in on_standby["filtered"]} == {"2", "4"}  # views > 30
    assert "4" not in {row[0] for row in on_standby["similar"]} and on_standby["similar"]

    # The Python API with the real model, read-only.
    hits = idxr_pg.search(
        "block hackers from getting into our network",
        kind="article",
        entities=True,
        k=2,
        database_url=standby_url,
        config=config,
    )
    assert hits[0].entity_id == "4"

    # The embedding cache on the standby: reads what the primary stored, and a write (what a
    # search path caching query vectors would do) is skipped there, not raised.
    key = "standby-test@1"
    vector = np.linspace(-1, 1, 384, dtype=np.float32)
    with EmbeddingCache(primary_url) as cache:
        cache.put_many(key, {"from-primary": vector})
    wait_for_replay(primary_url, standby_url)
    with EmbeddingCache(standby_url) as cache:
        cache.put_many(key, {"from-standby": vector})
        found = cache.get_many(key, ["from-primary", "from-standby"])
    assert set(found) == {"from-primary"} and np.allclose(found["from-primary"], vector)

    # The CLI, as an operator would run it against the replica.
    result = cli(standby_url, config_path, "search", "keep copies of laptops safe",
                 "--kind", "article", "--entities", "-k", "2", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["entity_id"] == "2"

    # Indexing is refused on the standby with one message naming the primary, not retried.
    for args in (("worker", "--once"), ("worker",), ("backfill", "article")):
        refused = cli(standby_url, config_path, *args)
        assert refused.returncode != 0, args
        assert "hot standby" in refused.stderr and "primary" in refused.stderr, refused.stderr

    # Every other command that writes fails with one line saying so, not a traceback.
    for args in (("pause", "article"), ("migrate",), ("errors", "retry", "--all"),
                 ("triggers", "install")):  # fmt: skip
        refused = cli(standby_url, config_path, *args)
        assert refused.returncode == 1, args
        assert "read-only transaction" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr, refused.stderr

    # The standby's index follows the primary: write there, index there, search here.
    execute(
        primary_url,
        "INSERT INTO articles (id, title, body, status) VALUES (5, 'Guest Wi-Fi',"
        " 'Wireless internet access for visitors in hotels and waiting rooms.', 'published')",
    )
    execute(primary_url, "UPDATE articles SET body = 'Fax machines rented by the month.'"
                         " WHERE id = 1")  # fmt: skip
    execute(primary_url, "DELETE FROM articles WHERE id = 3")
    worker_once(primary_url, config_path)
    wait_for_replay(primary_url, standby_url)

    rows = index_rows(standby_url)
    assert rows == index_rows(primary_url)
    ids = {row[0] for row in rows}
    assert "5" in ids and "3" not in ids
    assert ("1", "article.body", "Fax machines rented by the month.") in {r[:3] for r in rows}
    hits = idxr_pg.search(
        "wifi for guests in a hotel lobby",
        kind="article",
        entities=True,
        k=1,
        database_url=standby_url,
        config=config,
    )
    assert [h.entity_id for h in hits] == ["5"]
    result = cli(standby_url, config_path, "search", "telephony with voicemail",
                 "--kind", "article", "--entities", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3" not in {hit["entity_id"] for hit in json.loads(result.stdout)}
    assert sql_searches(standby_url) == sql_searches(primary_url)
    # What an operator watches works on the standby too: status, stale, jobs, loads (read-only;
    # the tidying they do on a primary is skipped), with the primary's figures.
    for args in (
        ("status", "--json"),
        ("stale", "--json"),
        ("jobs", "--json"),
        ("loads", "--json"),
    ):
        shown = cli(standby_url, config_path, *args)
        assert shown.returncode == 0, shown.stderr
        on_primary = json.loads(cli(primary_url, config_path, *args).stdout)
        if args[0] == "status":  # the kinds' figures (worker heartbeat ages move on)
            shown_kinds = json.loads(shown.stdout)["kinds"]
            assert shown_kinds == on_primary["kinds"]
            assert [k["indexed_entities"] for k in shown_kinds] == [4]
        else:
            assert json.loads(shown.stdout) == on_primary, args


def test_clusters_are_stopped_and_removed_even_when_the_test_fails():
    """The helper's promise the standby test relies on: a failure inside leaves no server
    running and no folder behind."""
    try:
        with clusters() as made:
            primary = made.primary()
            root, url = made.root, primary.url()
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            raise RuntimeError("the test failed")
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    except RuntimeError as exc:
        assert str(exc) == "the test failed"
    assert not root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=3).close()
