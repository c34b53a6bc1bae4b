"""The YAML config is validated with messages naming the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from idxr_pg.config import (
    DEFAULT_BACKFILL_BATCH_SIZE,
    ConfigError,
    load_config,
    refresh_interval_seconds,
)

VALID = """
entities:
  - name: subscription
    model: myapp.models:Subscription
    table: public.subscriptions
    key: subscription_id
    watch:
      - table: public.product_blocks
        key: subscription_id
    refresh: every 5m
embedding:
  max_batch_size: 16
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "idxr.yaml"
    path.write_text(text)
    return path


def test_valid_config_loads(tmp_path):
    config = load_config(write(tmp_path, VALID))
    entity = config.entity("subscription")
    assert entity.table == "public.subscriptions"
    assert entity.watch[0].table == "public.product_blocks"
    assert entity.refresh_interval == 300
    assert config.embedding.max_batch_size == 16
    assert config.embedding.model == "all-MiniLM-L6-v2"


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, VALID.replace("    refresh: every 5m", "    refesh: every 5m"))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "entities[0].refesh: unknown key" in message


def test_wrong_type_names_key_and_expectation(tmp_path):
    path = write(tmp_path, VALID.replace("max_batch_size: 16", "max_batch_size: lots"))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "embedding.max_batch_size" in message
    assert "valid integer" in message and "'lots'" in message


def test_missing_required_field_is_named(tmp_path):
    path = write(tmp_path, VALID.replace("    key: subscription_id\n    watch", "    watch"))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert "entities[0].key: required key is missing" in str(excinfo.value)


def test_bad_refresh_policy_explains_the_forms(tmp_path):
    path = write(tmp_path, VALID.replace("every 5m", "hourly"))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert "entities[0].refresh" in str(excinfo.value)
    assert "every <N><s|m|h|d>" in str(excinfo.value)


def test_missing_explicit_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "entities: [\n"))


def test_missing_default_file_is_an_empty_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IDXR_CONFIG", raising=False)
    assert load_config().entities == []


def test_duplicate_kind_names_are_rejected(tmp_path):
    entity = VALID.split("entities:\n", 1)[1].split("embedding:")[0]
    text = "entities:\n" + entity + entity
    with pytest.raises(ConfigError, match="repeated: subscription"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("policy", "seconds"),
    [("on_change", None), ("manual", None), ("every 30s", 30), ("every 2h", 7200)],
)
def test_refresh_policies(policy, seconds):
    assert refresh_interval_seconds(policy) == seconds


@pytest.mark.parametrize("policy", ["every 0s", "every 0m", "every 0 h"])
def test_refresh_interval_below_one_second_is_refused(tmp_path, policy):
    with pytest.raises(ValueError, match="at least 1 second"):
        refresh_interval_seconds(policy)
    path = write(tmp_path, VALID.replace("every 5m", policy))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert "entities[0].refresh" in message and "at least 1 second" in message
    assert len(message.strip().splitlines()) <= 2


def test_backfill_batches_are_set_apart_from_the_workers(tmp_path):
    config = load_config(write(tmp_path, VALID))
    assert config.backfill.batch_size == DEFAULT_BACKFILL_BATCH_SIZE
    assert config.backfill.batch_size > config.worker.batch_size
    config = load_config(write(tmp_path, VALID + "backfill:\n  batch_size: 32\n"))
    assert config.backfill.batch_size == 32 and config.worker.batch_size == 64
    path = write(tmp_path, VALID + "backfill:\n  batch_size: 0\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert "backfill.batch_size" in str(excinfo.value)
