"""The Embedder over a local sentence-transformers model (PyTorch backend)."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from idxr_pg.embedding.truncation import Span, fit

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["SentenceTransformerEmbedder"]

# Tokenizers report a huge sentinel (1e30) when a model has no declared limit.
_NO_LIMIT = 1_000_000
_WORDS = re.compile(r"\S+")


class SentenceTransformerEmbedder:
    """A sentence-transformers model on one device, in float32 or bfloat16 mixed precision.

    bfloat16: the weights of the linear layers are cast to bf16 once, and each call runs
    under ``torch.autocast`` (bf16), so the matrix products run in bf16 while embeddings,
    layer norms, softmax and pooling stay float32. That is as fast as casting the whole
    model to bf16 with vectors closer to float32 (cosine >= 0.9999 vs ~0.996 in our tests);
    casting the linear weights up front spares autocast re-casting them on every call.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        *,
        name: str,
        version: str,
        device: str,
        precision: str,
        fallback_max_tokens: int,
    ) -> None:
        self.model = model.eval()
        if precision == "bfloat16":
            _linear_weights_to_bf16(model)
        self.name = name
        self.version = version
        self.fingerprint = version.partition("+")[0]
        self.device = device
        self.precision = precision
        self.dimensions = _dimensions(model)
        self.max_tokens = _max_tokens(model, fallback_max_tokens)
        tokenizer = model.tokenizer
        if tokenizer is None:
            raise ValueError(f"model {name} has no text tokenizer")
        self._tokenizer: Any = tokenizer
        self._overhead = int(tokenizer.num_special_tokens_to_add(pair=False))
        # HF fast tokenizers are not safe to call from several threads at once.
        self._tokenizer_lock = threading.Lock()
        self._plain = _plain_text_extras(model, self._tokenizer)

    backend = "torch"

    @property
    def cache_key(self) -> str:
        """The embedding cache's model key: model, fingerprint, backend and precision."""
        from idxr_pg.embedding.cache import embedding_cache_key

        return embedding_cache_key(self.name, self.fingerprint, self.backend, self.precision)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        name: str,
        version: str,
        device: str,
        precision: str,
        fallback_max_tokens: int,
    ) -> SentenceTransformerEmbedder:
        """Load the model directory at ``path``, from local files only."""
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device=device, local_files_only=True)
        return cls(
            model,
            name=name,
            version=version,
            device=device,
            precision=precision,
            fallback_max_tokens=fallback_max_tokens,
        )

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, special tokens included, without truncation."""
        return [len(ids) for ids in self.token_ids(texts)]

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, special tokens included, without truncation: what
        `count_tokens` counts and what `embed_token_ids` embeds."""
        if not texts:
            return []
        with self._tokenizer_lock:
            encoded = self._tokenizer(
                list(texts),
                add_special_tokens=True,
                truncation=False,
                return_attention_mask=False,
                return_token_type_ids=False,
                verbose=False,
            )
        return list(encoded["input_ids"])

    @property
    def embeds_token_ids(self) -> bool:
        """Whether `embed_token_ids` can stand in for `embed` (a plain text model: the
        features of its preprocessing are token ids, attention mask and token types only)."""
        return self._plain is not None

    def truncate(self, text: str, max_tokens: int, strategy: str) -> str:
        """``text`` cut on this model's token boundaries to at most ``max_tokens`` tokens."""
        return fit(
            text,
            max_tokens,
            strategy,
            spans=self._spans,
            count=lambda t: self.count_tokens([t])[0],
            overhead=self._overhead,
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One forward pass over ``texts`` (keep them within ``max_tokens``)."""
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        with self._tokenizer_lock:
            features = self.model.preprocess(list(texts))
        return self._forward(features)

    def embed_token_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """`embed` of texts already tokenized by `token_ids` (each within ``max_tokens``):
        the batch is padded as the model's own preprocessing pads it, so the text is not
        tokenized a second time. Only where `embeds_token_ids`."""
        if self._plain is None:
            raise RuntimeError(f"{self!r} embeds texts only (its preprocessing is not plain)")
        if not ids:
            return np.empty((0, self.dimensions), dtype=np.float32)
        return self._forward(_padded(ids, self._tokenizer, self._plain))

    def _forward(self, features: dict[str, Any]) -> np.ndarray:
        """The model's unit vectors for preprocessed ``features``."""
        import torch
        from sentence_transformers.util import batch_to_device

        features = batch_to_device(features, self.model.device)
        with torch.inference_mode(), self._autocast():
            output = self.model(features)["sentence_embedding"]
        vectors = torch.nn.functional.normalize(output.float(), p=2, dim=1)
        return vectors.cpu().numpy()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision != "bfloat16":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(self.model.device.type, dtype=torch.bfloat16)

    def token_spans(self, text: str) -> list[Span]:
        """Character spans of the content tokens (`idxr_pg.embedding.chunking`)."""
        return self._spans(text)

    def _spans(self, text: str) -> list[Span]:
        """Character spans of the content tokens (offsets of a fast tokenizer, else words)."""
        if not getattr(self._tokenizer, "is_fast", False):
            return [m.span() for m in _WORDS.finditer(text)]
        with self._tokenizer_lock:
            encoded = self._tokenizer(
                text,
                add_special_tokens=False,
                truncation=False,
                return_offsets_mapping=True,
                verbose=False,
            )
        return [tuple(span) for span in encoded["offset_mapping"]]

    def __repr__(self) -> str:
        return (
            f"SentenceTransformerEmbedder({self.name}@{self.version}, device={self.device}, "
            f"precision={self.precision}, max_tokens={self.max_tokens})"
        )


_TOKEN_FEATURES = frozenset({"input_ids", "attention_mask", "token_type_ids"})
_PROBE = "a probe text"


@dataclass(frozen=True)
class _PlainFeatures:
    """What the model's preprocessing of a text gives besides its token ids: which of the
    token tensors, and the non-tensor entries (e.g. ``modality``)."""

    tensors: tuple[str, ...]
    extras: dict[str, Any]


def _plain_text_extras(model: SentenceTransformer, tokenizer: Any) -> _PlainFeatures | None:
    """The features the model's preprocessing gives a text beside its token ids, when that
    preprocessing is plain: its tensors are only token ids, attention mask and token types,
    and its ids are the tokenizer's own (no prompt, lower-casing or query expansion). None
    otherwise: such a model is only embedded from texts."""
    features = model.preprocess([_PROBE])
    tensors = {k for k, v in features.items() if hasattr(v, "shape")}
    if not tensors <= _TOKEN_FEATURES or "input_ids" not in tensors:
        return None
    ids = tokenizer([_PROBE], add_special_tokens=True, truncation=False)["input_ids"]
    if (
        features["input_ids"].tolist() != ids
        or getattr(tokenizer, "padding_side", "right") != "right"
    ):
        return None
    extras = {k: v for k, v in features.items() if k not in tensors}
    return _PlainFeatures(tuple(sorted(tensors)), extras)


def _padded(ids: Sequence[Sequence[int]], tokenizer: Any, plain: _PlainFeatures) -> dict[str, Any]:
    """The features of a batch of token id lists, right-padded to its longest."""
    import torch

    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), int(tokenizer.pad_token_id or 0), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, token_ids in enumerate(ids):
        input_ids[row, : len(token_ids)] = torch.as_tensor(token_ids, dtype=torch.long)
        mask[row, : len(token_ids)] = 1
    tensors = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(input_ids),
    }
    features: dict[str, Any] = {k: tensors[k] for k in plain.tensors}
    features.update(plain.extras)
    return features


def _linear_weights_to_bf16(model: SentenceTransformer) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)


def _dimensions(model: SentenceTransformer) -> int:
    getter = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )
    dimensions = getter()
    if not dimensions:
        raise ValueError("the model does not declare its embedding dimension")
    return int(dimensions)


def _max_tokens(model: SentenceTransformer, fallback: int) -> int:
    """The model's max sequence length, else ``fallback`` (which the model is then held to)."""
    declared = model.max_seq_length
    if declared and 0 < declared < _NO_LIMIT:
        return int(declared)
    model.max_seq_length = fallback
    return fallback
