"""The Embedder over ONNX Runtime: the model's ONNX export (float32 or int8) on the CPU.

Tokenizer, truncation, token counting and pooling are the sentence-transformers model's own
(inherited from `SentenceTransformerEmbedder`); only the transformer's forward pass runs in
ONNX Runtime. The export is built offline from the model's files (`onnx_export`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from idxr_pg.embedding.onnx_export import ensure_export
from idxr_pg.embedding.sentence_transformer import SentenceTransformerEmbedder

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["OnnxEmbedder"]


class OnnxEmbedder(SentenceTransformerEmbedder):
    """A sentence-transformers model whose transformer runs in ONNX Runtime on the CPU.

    ``version`` is the model fingerprint plus ``+onnx-<precision>``: the index records it and
    search refuses a query embedded on another numeric path (see `identity_version`).
    """

    backend = "onnx"

    def __init__(
        self,
        model: SentenceTransformer,
        session: Any,
        input_names: Sequence[str],
        *,
        name: str,
        version: str,
        precision: str,
        fallback_max_tokens: int,
    ) -> None:
        super().__init__(
            model,
            name=name,
            version=version,
            device="cpu",
            precision="float32",  # the torch side (pooling) runs float32
            fallback_max_tokens=fallback_max_tokens,
        )
        self.precision = precision
        self._session = session
        self._inputs = tuple(input_names)
        self._pooling = [module for _, module in list(model.named_children())[1:]]

    @classmethod
    def load_onnx(
        cls,
        path: Path,
        *,
        name: str,
        fingerprint: str,
        version: str,
        precision: str,
        fallback_max_tokens: int,
        threads: int | None = None,
    ) -> OnnxEmbedder:
        """Load the model at ``path`` (tokenizer, pooling) and its ONNX export (built if missing)."""
        import onnxruntime as ort
        from sentence_transformers import SentenceTransformer

        export = ensure_export(path, name, fingerprint)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        options.intra_op_num_threads = max(1, threads)
        session = ort.InferenceSession(
            str(export.file(precision)), options, providers=["CPUExecutionProvider"]
        )
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        return cls(
            model,
            session,
            export.inputs,
            name=name,
            version=version,
            precision=precision,
            fallback_max_tokens=fallback_max_tokens,
        )

    def _forward(self, features: dict[str, Any]) -> np.ndarray:
        """One ONNX Runtime call over preprocessed ``features``, then the model's pooling."""
        import torch

        feed = {name: features[name].numpy().astype(np.int64) for name in self._inputs}
        (hidden,) = self._session.run(["last_hidden_state"], feed)
        features["token_embeddings"] = torch.from_numpy(hidden)
        with torch.inference_mode():
            for module in self._pooling:
                features = module(features)
            output = features["sentence_embedding"]
        vectors = torch.nn.functional.normalize(output.float(), p=2, dim=1)
        return vectors.numpy()

    def __repr__(self) -> str:
        return (
            f"OnnxEmbedder({self.name}@{self.version}, precision={self.precision}, "
            f"max_tokens={self.max_tokens})"
        )
