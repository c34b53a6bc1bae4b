"""The ONNX Runtime backend for real: the int8 export of the default model, its vectors
against torch float32, the cache keeping the two apart, and search refusing a mix."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import psycopg
import pytest

from idxr_pg.config import EmbeddingSettings, IdxrConfig
from idxr_pg.db.connection import connect
from idxr_pg.embedding import EmbeddingCache, EmbeddingService, EmbedRequest, load_embedder
from idxr_pg.embedding.cache import text_hash
from idxr_pg.embedding.onnx_backend import OnnxEmbedder
from idxr_pg.embedding.onnx_export import OnnxExport, build_export, ensure_export
from idxr_pg.embedding.resolve import locate_model, model_version
from idxr_pg.embedding.sentence_transformer import SentenceTransformerEmbedder
from idxr_pg.indexing.registry import RegistryError, register
from idxr_pg.search import ModelMismatchError, search
from tests.integration import search_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEXTS = [
    "subscription.customer.name: Acme Logistics Amsterdam B.V. (account 4711)",
    "subscription.product.description: Fibre Business at 1 Gbit/s for sites in Utrecht, "
    "including a static IPv4 address and 24/7 monitoring by the network operations centre.",
    "subscription.notes.0.text: Latency complaints were traced to a misconfigured switch.",
    "product.name: Cloud Backup",
    "subscription.contract.terms: " + "The provider repairs faults within four hours. " * 40,
]


@pytest.fixture(scope="module")
def int8() -> OnnxEmbedder:
    embedder = load_embedder(EmbeddingSettings(backend="onnx", precision="int8"))
    assert isinstance(embedder, OnnxEmbedder)
    return embedder


@pytest.fixture(scope="module")
def fp32() -> SentenceTransformerEmbedder:
    embedder = load_embedder(EmbeddingSettings(backend="torch", precision="float32"))
    assert isinstance(embedder, SentenceTransformerEmbedder)
    return embedder


@pytest.mark.model
def test_int8_vectors_are_close_to_torch_float32(int8, fp32) -> None:
    assert (int8.backend, int8.precision, int8.device) == ("onnx", "int8", "cpu")
    assert (int8.name, int8.dimensions, int8.max_tokens) == (fp32.name, 384, 256)
    assert int8.version == f"{fp32.version}+onnx-int8"
    assert int8.count_tokens(TEXTS) == fp32.count_tokens(TEXTS)  # the same tokenizer
    texts = [int8.truncate(t, int8.max_tokens, "end") for t in TEXTS]
    quantized, reference = int8.embed(texts), fp32.embed(texts)
    assert quantized.shape == (len(texts), 384) and quantized.dtype == np.float32
    assert np.allclose(np.linalg.norm(quantized, axis=1), 1.0, atol=1e-5)
    cosine = (quantized * reference).sum(axis=1)
    assert cosine.min() >= 0.99, cosine
    assert not np.array_equal(quantized, reference)  # really another numeric path
    # One text alone (batch of 1, another sequence length than the export's example). Not
    # bit-identical to the same text in a batch: dynamic quantization scales activations per
    # batch, so companions (and their padding) move an int8 vector slightly.
    alone = int8.embed(texts[:1])[0]
    assert float(alone @ quantized[0]) > 0.99
    assert float(alone @ reference[0]) >= 0.99


@pytest.mark.model
def test_onnx_float32_matches_torch_float32(fp32) -> None:
    onnx32 = load_embedder(EmbeddingSettings(backend="onnx", precision="float32"))
    assert onnx32.version == f"{fp32.version}+onnx-float32"
    cosine = (onnx32.embed(TEXTS[:4]) * fp32.embed(TEXTS[:4])).sum(axis=1)
    assert cosine.min() > 0.99999
    # The service's tokenize-once path gives the same vectors on this backend too.
    by_ids = onnx32.embed_token_ids(onnx32.token_ids(TEXTS[:4]))
    assert np.allclose(by_ids, onnx32.embed(TEXTS[:4]), atol=1e-6)


@pytest.mark.model
def test_the_cache_keeps_int8_and_float32_apart(
    database_url: str, db_conn: psycopg.Connection, int8, fp32
) -> None:
    text = "subscription.notes.9.text: a note only this test embeds (onnx vs torch)"
    requests = [EmbedRequest("k:1", text)]
    settings = EmbeddingSettings()
    with EmbeddingCache(database_url) as cache:
        torch_service = EmbeddingService(fp32, settings, cache)
        onnx_service = EmbeddingService(int8, settings, cache)
        assert torch_service.model_key != onnx_service.model_key
        from_torch = torch_service.embed(requests)[0].vector
        from_onnx = onnx_service.embed(requests)[0].vector  # not served from torch's entry
        assert onnx_service.stats.texts_embedded == 1
        again = onnx_service.embed(requests)[0].vector  # now from its own entry
    assert np.array_equal(again, from_onnx)
    assert not np.array_equal(from_onnx, from_torch)
    assert np.allclose(from_onnx, int8.embed([text])[0], atol=1e-6)
    keys = db_conn.execute(
        "SELECT model FROM idxr.embedding_cache WHERE model IN (%s, %s) AND text_hash = %s"
        " ORDER BY model",
        [torch_service.model_key, onnx_service.model_key, text_hash(text)],
    ).fetchall()
    assert [k for (k,) in keys] == sorted([torch_service.model_key, onnx_service.model_key])


@pytest.mark.model
def test_search_refuses_a_query_from_another_backend(isolated_database_url, int8, fp32) -> None:
    with connect(isolated_database_url, autocommit=True) as conn:
        search_data.register_model(conn, fp32, ["product"])  # index built with torch
    onnx_config = IdxrConfig(embedding=EmbeddingSettings(backend="onnx", precision="int8"))
    with pytest.raises(ModelMismatchError) as excinfo:
        search("internet", database_url=isolated_database_url, config=onnx_config)
    message = str(excinfo.value)
    assert "same model on the torch backend" in message and "onnx-int8" in message
    assert "embedding.backend: torch" in message
    torch_config = IdxrConfig(embedding=EmbeddingSettings(backend="torch"))
    assert search("internet", database_url=isolated_database_url, config=torch_config) == []


@pytest.mark.model
def test_register_refuses_a_worker_on_another_backend(isolated_database_url, int8, fp32) -> None:
    with connect(isolated_database_url, autocommit=True) as conn:
        register(conn, [], int8)  # an empty index may be (re)built on any backend
        register(conn, [], fp32)
        search_data.index_catalogue(conn, fp32)  # now it holds torch vectors
        register(conn, [], fp32)  # the same path again: fine
        with pytest.raises(RegistryError) as excinfo:
            register(conn, [], int8)
        message = str(excinfo.value)
        assert "vectors computed on the torch backend" in message and "onnx-int8" in message
        assert "embedding.backend: torch" in message
        recorded = conn.execute(
            "SELECT version FROM idxr.embedding_models WHERE name = %s", [fp32.name]
        ).fetchone()
    assert recorded == (fp32.version,)  # the refusal changed nothing


@pytest.mark.model
def test_a_missing_export_is_built_offline_on_first_use(tmp_path: Path) -> None:
    location = locate_model("all-MiniLM-L6-v2")
    version = model_version(location.path)
    export = ensure_export(location.path, location.name, version, root=tmp_path)
    assert export.complete() and export.directory.is_relative_to(tmp_path)
    assert export.inputs == ("input_ids", "attention_mask", "token_type_ids")
    assert export.file("int8").stat().st_size < export.file("float32").stat().st_size
    before = export.file("int8").stat().st_mtime_ns
    assert ensure_export(location.path, location.name, version, root=tmp_path) == export
    assert export.file("int8").stat().st_mtime_ns == before  # built once
    # A folder that is already complete is kept when a second builder finishes.
    build_export(location.path, export.directory)
    assert OnnxExport(export.directory).complete()
    assert not [p for p in tmp_path.joinpath("onnx").iterdir() if p.name.startswith(".")]
