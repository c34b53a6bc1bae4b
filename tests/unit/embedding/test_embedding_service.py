"""EmbeddingService without a database: dedupe, retries with backoff, errors naming keys."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

from idxr_pg.config import EmbeddingSettings
from idxr_pg.embedding import (
    DeterministicEmbedder,
    EmbeddingError,
    EmbeddingService,
    EmbedRequest,
    load_embedder,
)
from idxr_pg.embedding.device import choose_precision, cpu_has_fast_bf16


class FlakyEmbedder(DeterministicEmbedder):
    """Fails its first ``failures`` calls, then works; or returns bad output when told to."""

    def __init__(self, failures: int = 0, bad_output: np.ndarray | None = None) -> None:
        super().__init__(dimensions=8)
        self.failures = failures
        self.bad_output = bad_output
        self.calls = 0

    def embed(self, texts):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"model hiccup {self.calls}")
        if self.bad_output is not None:
            return self.bad_output
        return super().embed(texts)


def service(embedder: DeterministicEmbedder, delays: list[float], **settings: object):
    return EmbeddingService(embedder, EmbeddingSettings(**settings), sleep=delays.append)


def test_vectors_are_aligned_with_requests_and_duplicates_embedded_once() -> None:
    embedder = FlakyEmbedder()
    svc = service(embedder, [])
    texts = ["a.x: red", "a.y: blue", "a.x: red", "a.z: green", "a.y: blue"]
    results = svc.embed([EmbedRequest(f"e:{i}", t) for i, t in enumerate(texts)])
    expected = embedder.embed(texts)
    for result, vector in zip(results, expected, strict=True):
        assert np.array_equal(result.vector, vector)
        assert result.vector.dtype == np.float32
        assert result.cached is False and result.truncation is None
    stats = svc.stats
    assert (stats.model_calls, stats.texts_embedded, stats.deduplicated) == (1, 3, 2)


def test_no_requests_no_model_call() -> None:
    embedder = FlakyEmbedder()
    assert service(embedder, []).embed([]) == []
    assert embedder.calls == 0


def test_a_failing_call_is_retried_with_exponential_backoff() -> None:
    embedder = FlakyEmbedder(failures=2)
    delays: list[float] = []
    svc = service(embedder, delays, max_attempts=3)
    results = svc.embed([EmbedRequest("sub:1", "a.b: text")])
    assert len(results) == 1 and embedder.calls == 3
    assert delays == [0.2, 0.4]
    assert (svc.stats.model_calls, svc.stats.retries) == (3, 2)


def test_after_the_last_attempt_the_error_names_every_key_in_the_batch() -> None:
    embedder = FlakyEmbedder(failures=99)
    delays: list[float] = []
    svc = service(embedder, delays, max_attempts=2)
    requests = [
        EmbedRequest("subscription:42", "a.b: one"),
        EmbedRequest("subscription:43", "a.b: two"),
        EmbedRequest("product:7", "a.b: one"),  # a duplicate text: its key is named too
    ]
    with pytest.raises(EmbeddingError) as caught:
        svc.embed(requests)
    error = caught.value
    assert sorted(error.keys) == ["product:7", "subscription:42", "subscription:43"]
    for key in error.keys:
        assert key in str(error)
    assert "model hiccup 2" in str(error)
    assert embedder.calls == 2 and delays == [0.2]
    copy = pickle.loads(pickle.dumps(error))
    assert copy.keys == error.keys and str(copy) == str(error)


def test_only_the_failing_batch_is_named() -> None:
    class FailsOnPoison(DeterministicEmbedder):
        def embed(self, texts):  # type: ignore[no-untyped-def]
            if any("poison" in t for t in texts):
                raise ValueError("cannot embed")
            return super().embed(texts)

    svc = service(FailsOnPoison(dimensions=8), [], max_batch_size=1, max_attempts=1)
    with pytest.raises(EmbeddingError) as caught:
        svc.embed([EmbedRequest("ok:1", "a: fine"), EmbedRequest("bad:1", "a: poison")])
    assert caught.value.keys == ["bad:1"]


class RecordingCache:
    """An in-memory stand-in for the cache's two calls (the database cache has its own tests
    in tests/integration/test_embedding_cache.py): what each ``put_many`` stored."""

    def __init__(self) -> None:
        self.puts: list[set[str]] = []

    def get_many(self, model_key: str, hashes: list[str]) -> dict[str, np.ndarray]:
        return {}

    def put_many(self, model_key: str, vectors: dict[str, np.ndarray]) -> None:
        self.puts.append(set(vectors))


def test_a_call_stores_its_new_vectors_in_one_cache_write() -> None:
    cache = RecordingCache()
    svc = EmbeddingService(
        DeterministicEmbedder(dimensions=8),
        EmbeddingSettings(max_batch_size=1),
        cache,  # type: ignore[arg-type]
    )
    texts = ["a: one", "a: two two", "a: three three three"]
    svc.embed([EmbedRequest(f"e:{i}", t) for i, t in enumerate(texts)])
    assert svc.stats.model_calls == 3
    assert cache.puts == [set(svc.text_hashes(texts))]


def test_a_failing_batch_still_stores_the_vectors_before_it() -> None:
    class FailsOnPoison(DeterministicEmbedder):
        def embed(self, texts):  # type: ignore[no-untyped-def]
            if any("poison" in t for t in texts):
                raise ValueError("cannot embed")
            return super().embed(texts)

    cache = RecordingCache()
    settings = EmbeddingSettings(max_batch_size=1, max_attempts=1)
    svc = EmbeddingService(FailsOnPoison(dimensions=8), settings, cache)  # type: ignore[arg-type]
    # Longest first: the two fine texts are embedded before the poisoned one fails.
    texts = ["a: fine and long text", "a: fine text", "a: poison"]
    with pytest.raises(EmbeddingError):
        svc.embed([EmbedRequest(f"e:{i}", t) for i, t in enumerate(texts)])
    assert cache.puts == [set(svc.text_hashes(texts[:2]))]


@pytest.mark.parametrize(
    "bad",
    [np.full((1, 8), np.nan, dtype=np.float32), np.zeros((2, 8), dtype=np.float32)],
    ids=["nan", "wrong-shape"],
)
def test_malformed_model_output_is_a_failure_not_a_vector(bad: np.ndarray) -> None:
    svc = service(FlakyEmbedder(bad_output=bad), [], max_attempts=1)
    with pytest.raises(EmbeddingError, match="k:1"):
        svc.embed([EmbedRequest("k:1", "a: text")])


def test_stats_snapshot_and_reset() -> None:
    svc = service(FlakyEmbedder(), [])
    svc.embed([EmbedRequest("k:1", "a: text")])
    snapshot = svc.stats.snapshot()
    svc.embed([EmbedRequest("k:2", "a: other")])
    assert snapshot.texts_embedded == 1 and svc.stats.texts_embedded == 2
    previous = svc.reset_stats()
    assert previous.texts_embedded == 2 and svc.stats.texts_embedded == 0


def test_deterministic_embedder_is_stable_across_processes_and_normalised() -> None:
    embedder = load_embedder(EmbeddingSettings(model="deterministic-test"))
    assert isinstance(embedder, DeterministicEmbedder)
    assert embedder.dimensions == 384
    assert load_embedder(EmbeddingSettings(model="deterministic-test")) is embedder
    here = embedder.embed(["subscription.name: Fibre"])[0]
    assert here.dtype == np.float32 and abs(float(np.linalg.norm(here)) - 1) < 1e-6
    code = (
        "from idxr_pg.embedding import DeterministicEmbedder;"
        "print(DeterministicEmbedder(384).embed(['subscription.name: Fibre'])[0].tobytes().hex())"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert bytes.fromhex(there) == here.tobytes()
    other = embedder.embed(["subscription.name: Copper"])[0]
    assert float(here @ other) < 0.5


def test_precision_choice() -> None:
    assert choose_precision("cpu", "float32") == "float32"
    assert choose_precision("cpu", "bfloat16") == "bfloat16"
    assert choose_precision("cpu", "auto") == ("bfloat16" if cpu_has_fast_bf16() else "float32")
    assert choose_precision("mps", "auto") == "float32"


def test_fast_bf16_detection_reads_cpu_flags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with_bf16 = tmp_path / "with"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_has_fast_bf16(with_bf16) is True
    assert cpu_has_fast_bf16(without) is False
    assert cpu_has_fast_bf16(tmp_path / "missing") is False
