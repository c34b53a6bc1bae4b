"""``load_embedder``: the one way the rest of idxr-pg gets an Embedder, once per process."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from idxr_pg.config import EmbeddingSettings
from idxr_pg.embedding.base import Embedder, ModelLoadError
from idxr_pg.embedding.deterministic import DETERMINISTIC_MODEL, DeterministicEmbedder
from idxr_pg.embedding.device import choose_backend, choose_device
from idxr_pg.embedding.resolve import identity_version, locate_model, model_version

__all__ = ["forget_loaded_embedders", "load_embedder"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: dict[tuple[object, ...], Embedder] = {}


def load_embedder(settings: EmbeddingSettings) -> Embedder:
    """The embedder the settings name, loaded once per process (same settings, same instance).

    Never touches the network: the model comes from the bundled package, a local directory
    or the local Hugging Face cache, else ``ModelLoadError`` says where it looked.
    """
    key = (
        settings.model,
        settings.dimensions,
        settings.device,
        settings.backend,
        settings.precision,
        settings.fallback_max_tokens,
    )
    with _lock:
        embedder = _loaded.get(key)
        if embedder is None:
            embedder = _load(settings)
            _loaded[key] = embedder
        return embedder


def forget_loaded_embedders() -> None:
    """Drop the per-process instances (tests; freeing memory)."""
    with _lock:
        _loaded.clear()


def _load(settings: EmbeddingSettings) -> Embedder:
    if settings.model == DETERMINISTIC_MODEL:
        return DeterministicEmbedder(dimensions=settings.dimensions or 384)
    # Belt and braces: we only ever pass local directories, but no library call may reach out.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    location = locate_model(settings.model)
    device = choose_device(
        settings.device if settings.backend != "onnx" else settings.device or "cpu"
    )
    try:
        path = choose_backend(device, settings.backend, settings.precision)
    except ValueError as exc:
        raise ModelLoadError(f"embedding model {settings.model!r}: {exc}") from None
    fingerprint = model_version(location.path)
    version = identity_version(fingerprint, path.backend, path.precision)
    try:
        load: Callable[..., Embedder]
        if path.backend == "onnx":
            from idxr_pg.embedding.onnx_backend import OnnxEmbedder

            backend_options: dict[str, Any] = {"fingerprint": fingerprint}
            load = OnnxEmbedder.load_onnx
        else:
            from idxr_pg.embedding.sentence_transformer import SentenceTransformerEmbedder

            backend_options = {"device": device}
            load = SentenceTransformerEmbedder.load
        embedder = load(
            location.path,
            name=location.name,
            version=version,
            precision=path.precision,
            fallback_max_tokens=settings.fallback_max_tokens,
            **backend_options,
        )
    except ModuleNotFoundError as exc:
        raise ModelLoadError(
            f"embedding model {settings.model!r} on backend {path}: {exc}; install idxr-pg's "
            "dependencies (make setup), or set embedding.backend to torch"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"embedding model {settings.model!r} from {location.source} could not be loaded on "
            f"{device} ({path}): {type(exc).__name__}: {exc}"
        ) from exc
    if settings.dimensions is not None and settings.dimensions != embedder.dimensions:
        raise ModelLoadError(
            f"embedding.dimensions is {settings.dimensions} but model {settings.model!r} "
            f"({location.source}) makes {embedder.dimensions}-dimensional vectors: remove "
            "embedding.dimensions or set it to the model's size"
        )
    log.info("loaded embedding model %r from %s", embedder, location.source)
    return embedder
