"""The one map between `Counts` and the idxr.jobs count columns, and the SQL built from it."""

from __future__ import annotations

from idxr_pg.db import jobs
from idxr_pg.records.counts import Counts

JOB_COLUMNS = [
    "done",
    "embedded",
    "cache_hits",
    "records_written",
    "records_deleted",
    "unchanged",
    "deleted",
    "skipped",
    "failed",
]


def test_job_columns_keep_their_names_and_order():
    counts = Counts(entities=7, texts_embedded=5, cache_hits=2, failed=1, batches=3, indexed=6)
    columns = jobs.job_columns(counts)
    assert list(columns) == JOB_COLUMNS
    assert columns["done"] == 7 and columns["embedded"] == 5 and columns["failed"] == 1


def test_job_counts_reads_column_names_back():
    counts = jobs.job_counts(done=100, embedded=250, records_written=300)
    assert counts == Counts(entities=100, texts_embedded=250, records_written=300)
    assert jobs.job_counts(**jobs.job_columns(counts)) == counts


def test_every_count_column_is_in_every_jobs_statement():
    for column in JOB_COLUMNS:
        assert f"j.{column}" in jobs.GET_JOB_SQL
        assert f"%({column})s" in jobs.CREATE_JOB_SQL
        assert f"{column} = {column} + %({column})s" in jobs.ADVANCE_JOB_SQL
