"""Hardening (issue 12), runtime robustness: resume right after a SIGKILL, deep JSON isolated
to its entity, dead processes marked, final connection errors not retried."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.integration.test_backfill import (
    KIND,
    SLOW_DOCUMENT,
    cli,
    expected_index,
    index_set,
    job_row,
    make_docs,
    spawn,
    wait_for_progress,
    write_config,
)


@pytest.fixture
def url(isolated_database_url: str) -> str:
    return isolated_database_url


# --------------------------------------------------------------------------- item 1


@pytest.mark.slow
def test_resume_at_once_after_sigkill_gives_the_exact_index(url: str, tmp_path: Path):
    count = 400
    make_docs(url, count)
    config = write_config(tmp_path / "idxr.yaml", document=SLOW_DOCUMENT)
    proc = spawn(url, config, "backfill", KIND, "--batch-size", "20")
    wait_for_progress(url, proc, at_least=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_id = job_row(url)[0]

    # at once: no `jobs`/`status` call, no waiting for the killed sessions to end
    resumed = json.loads(cli(url, config, "backfill", KIND, "--resume", "--json").stdout)
    assert resumed["state"] == "succeeded"
    assert resumed["resumed_from"] == killed_id
    assert resumed["done"] == count
    assert index_set(url) == expected_index(url)
