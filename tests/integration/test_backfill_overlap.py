"""The backfill's overlap (issue 14): batch N+1 is leased, loaded, flattened, diffed and
embedded in a helper thread while batch N is written. The index, the job's counts and its
checkpoint are exactly those of a run without overlap (real model); a stop request writes
the batch being prepared and then stops with an exact checkpoint that resumes to the exact
index; an error while writing gives back the leases of the batch being prepared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import psycopg
import pytest

from idxr_pg.config import EmbeddingSettings, load_config
from idxr_pg.embedding import load_embedder
from idxr_pg.indexing.pipeline import Pipeline
from idxr_pg.runtime.backfill import (
    Backfill,
    BackfillError,
    BackfillInterrupted,
    BackfillOptions,
)
from tests.integration.test_backfill import (
    KIND,
    embeddable_texts,
    expected_index,
    index_set,
    make_docs,
    sql,
    write_config,
)

BATCH = 25


def run(url: str, config_path: Path, embedder, **options) -> object:
    should_stop = options.pop("should_stop", lambda: False)
    runner = Backfill(
        url,
        load_config(config_path),
        KIND,
        BackfillOptions(batch_size=BATCH, **options),
        embedder=embedder,
        should_stop=should_stop,
    )
    return runner.run()


def leases_left(url: str) -> int:
    return sql(url, "SELECT count(*) FROM idxr.leases")[0][0]


def vectors(url: str) -> dict[tuple[str, str], np.ndarray]:
    rows = sql(
        url,
        "SELECT entity_id, path::text, embedding::text FROM idxr.search_index"
        " WHERE entity_kind = %s AND embedding IS NOT NULL",
        [KIND],
    )
    return {(e, p): np.array(json.loads(v), dtype=np.float32) for e, p, v in rows}


@pytest.mark.model
def test_overlapped_backfill_equals_a_sequential_one_with_the_real_model(
    isolated_database_url: str, tmp_path: Path
):
    url = isolated_database_url
    make_docs(url, 90)  # four batches, the last one short
    config = write_config(tmp_path / "idxr.yaml", model="all-MiniLM-L6-v2")
    embedder = load_embedder(EmbeddingSettings())

    overlapped = run(url, config, embedder, overlap=True)
    index_overlapped, vectors_overlapped = index_set(url), vectors(url)
    sql(url, "TRUNCATE idxr.search_index, idxr.embedding_cache")
    sequential = run(url, config, embedder, overlap=False)

    assert index_overlapped == index_set(url) == expected_index(url)
    assert overlapped.counts.entities == sequential.counts.entities == 90
    assert overlapped.counts.records_written == sequential.counts.records_written
    assert overlapped.counts.texts_embedded == embeddable_texts(url)
    assert overlapped.checkpoint == sequential.checkpoint == "90"
    assert overlapped.state == "succeeded" and leases_left(url) == 0
    reference = vectors(url)
    assert reference.keys() == vectors_overlapped.keys()
    title = reference[("7", "doc.title")]
    assert float(title @ embedder.embed(["doc.title: title of document 7"])[0]) > 0.99
    for key, vector in reference.items():
        assert float(vector @ vectors_overlapped[key]) > 0.999, key


def test_a_stop_request_writes_the_batch_being_prepared_then_resumes_exactly(
    isolated_database_url: str, tmp_path: Path
):
    url = isolated_database_url
    make_docs(url, 100)
    config = write_config(tmp_path / "idxr.yaml")
    embedder = load_embedder(EmbeddingSettings(model="deterministic-test"))
    asked: list[bool] = []

    def should_stop() -> bool:  # before each batch is started: stop before the third
        asked.append(True)
        return len(asked) >= 3

    with pytest.raises(BackfillInterrupted) as stopped:
        run(url, config, embedder, should_stop=should_stop)

    job = stopped.value.job
    # batch 1 was written while batch 2 was prepared; the stop came before batch 3 began,
    # and batch 2 (already being prepared) was written too
    assert (job.state, job.checkpoint, job.counts.entities) == ("interrupted", "50", 50)
    done = {(e, p, h) for e, p, h in expected_index(url) if int(e) <= 50}
    assert index_set(url) == done
    assert leases_left(url) == 0

    resumed = run(url, config, embedder, resume=True)
    assert resumed.state == "succeeded" and resumed.counts.entities == 100
    assert index_set(url) == expected_index(url)
    assert leases_left(url) == 0


def test_an_error_while_writing_gives_back_the_leases_of_the_batch_being_prepared(
    isolated_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    url = isolated_database_url
    make_docs(url, 100)
    config = write_config(tmp_path / "idxr.yaml")
    embedder = load_embedder(EmbeddingSettings(model="deterministic-test"))
    writes: list[int] = []
    real_write = Pipeline._write

    def failing_second_write(self, conn, leased, *args):
        writes.append(len(leased.ids))
        if len(writes) == 2:
            raise psycopg.OperationalError("the server went away (test)")
        return real_write(self, conn, leased, *args)

    monkeypatch.setattr(Pipeline, "_write", failing_second_write)
    with pytest.raises(BackfillError, match="checkpoint '25'"):
        run(url, config, embedder)
    # batch 2 failed to write, batch 3 was being prepared (leased): no lease is left behind
    assert leases_left(url) == 0
    assert sql(url, "SELECT state, checkpoint FROM idxr.jobs") == [("failed", "25")]
    monkeypatch.undo()
    resumed = run(url, config, embedder, resume=True)
    assert resumed.state == "succeeded"
    assert index_set(url) == expected_index(url)
