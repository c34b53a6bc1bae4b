"""The Embedder over a local sentence-transformers model (PyTorch backend)."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Sequence
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
        return [len(ids) for ids in encoded["input_ids"]]

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
        import torch
        from sentence_transformers.util import batch_to_device

        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        with self._tokenizer_lock:
            features = self.model.preprocess(list(texts))
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
