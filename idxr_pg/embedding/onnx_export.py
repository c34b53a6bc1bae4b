"""The ONNX exports of a model (float32, and int8 with dynamically quantized weights), built
offline from the model's own local files, once, into the idxr-pg cache directory.

Where: ``$IDXR_PG_CACHE_DIR``, else ``$XDG_CACHE_HOME/idxr-pg``, else ``~/.cache/idxr-pg``;
one folder per model fingerprint, so other weights never reuse an export. Never in the
repository. ``make setup`` builds the default model's export with

    python -m idxr_pg.embedding.onnx_export [MODEL]

and a missing export is built on first use (a few seconds; the folder is written beside
its final place and renamed into it, so concurrent builders never see half an export).

Why not ``SentenceTransformer(backend="onnx")``: sentence-transformers 6.2 needs
optimum-onnx for it, whose only release (0.1.0) requires transformers < 4.58 while
sentence-transformers 6.2 requires transformers >= 5. So the export is done here with
``torch.onnx.export`` (TorchScript exporter, eager attention) and quantized with
``onnxruntime.quantization.quantize_dynamic``; tokenizer and pooling stay the
sentence-transformers model's own (`idxr_pg.embedding.onnx_backend`).

int8 recipe (measured on MiniLM-L6, docs/benchmarks.md): int8 weights per output channel in
every linear layer except each block's feed-forward output projection (1536 -> 384, whose
activations carry outliers), attention products between activations left float32. Quantizing
every layer per tensor measured p1 cosine 0.93 to float32; this recipe passes 0.99.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "EXPORT_FORMAT",
    "OnnxExport",
    "build_export",
    "cache_root",
    "ensure_export",
    "export_dir",
    "main",
]

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1
"""Bumped whenever the export or quantization recipe changes: a new folder, a new export."""
FLOAT32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
STAMP_FILE = "export.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17

_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class OnnxExport:
    """An export's folder and its two graphs."""

    directory: Path

    def file(self, precision: str) -> Path:
        if precision not in ("float32", "int8"):
            raise ValueError(f"no ONNX export in precision {precision!r} (float32 or int8)")
        return self.directory / (INT8_FILE if precision == "int8" else FLOAT32_FILE)

    @property
    def inputs(self) -> tuple[str, ...]:
        stamp = json.loads((self.directory / STAMP_FILE).read_text(encoding="utf-8"))
        return tuple(stamp["inputs"])

    def complete(self) -> bool:
        return all(
            (self.directory / name).is_file() for name in (FLOAT32_FILE, INT8_FILE, STAMP_FILE)
        )


def cache_root() -> Path:
    """The idxr-pg cache directory (see the module doc)."""
    explicit = os.environ.get("IDXR_PG_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "idxr-pg"


def export_dir(name: str, version: str, root: Path | None = None) -> Path:
    """The export folder of model ``name`` whose files fingerprint to ``version``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return (root or cache_root()) / "onnx" / f"{safe}-{version}-v{EXPORT_FORMAT}"


def ensure_export(
    model_path: Path, name: str, version: str, root: Path | None = None
) -> OnnxExport:
    """The export of the model at ``model_path``, built now if it is missing."""
    export = OnnxExport(export_dir(name, version, root))
    if export.complete():
        return export
    with _lock:
        if not export.complete():
            log.warning(
                "building the ONNX export of %s into %s (once; `python -m "
                "idxr_pg.embedding.onnx_export` builds it ahead, as `make setup` does)",
                name,
                export.directory,
            )
            build_export(model_path, export.directory)
    return export


def build_export(model_path: Path, directory: Path) -> None:
    """Export the model at ``model_path`` to ONNX float32 and int8 into ``directory``."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        inputs = _export_float32(model_path, work / FLOAT32_FILE)
        _quantize_int8(work / FLOAT32_FILE, work / INT8_FILE)
        stamp = {"format": EXPORT_FORMAT, "model_path": str(model_path), "inputs": inputs}
        (work / STAMP_FILE).write_text(json.dumps(stamp, indent=2), encoding="utf-8")
        try:
            work.rename(directory)
        except OSError:
            if not OnnxExport(directory).complete():  # not a concurrent builder that won
                shutil.rmtree(directory, ignore_errors=True)
                work.rename(directory)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _export_float32(model_path: Path, target: Path) -> list[str]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    # Eager attention: the SDPA path builds its masks in Python, which the tracer would
    # freeze to the example's shapes (and it exports several times slower).
    model = AutoModel.from_pretrained(
        str(model_path), local_files_only=True, attn_implementation="eager"
    ).eval()
    example = tokenizer(["an example text", "a second, longer example text"], padding=True)
    names = [name for name in INPUTS if name in example]

    class _Hidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, tensors, strict=True))).last_hidden_state

    args = tuple(torch.tensor(example[name], dtype=torch.int64) for name in names)
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "last_hidden_state"]}
    import warnings

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape checks
        torch.onnx.export(
            _Hidden(model),
            args,
            str(target),
            dynamo=False,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
        )
    return names


def _quantize_int8(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    keep_float = [
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and (
            not any(name in weights for name in node.input)  # activation x activation
            or ("/output/dense/" in node.name and "/attention/" not in node.name)  # FFN out
        )
    ]
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=False,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=keep_float,
    )


def main(argv: list[str] | None = None) -> int:
    """Build (or confirm) the ONNX export of a model: ``python -m idxr_pg.embedding.onnx_export``."""
    from idxr_pg.config import DEFAULT_MODEL
    from idxr_pg.embedding.base import ModelLoadError
    from idxr_pg.embedding.resolve import locate_model, model_version

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        location = locate_model(args.model)
        export = ensure_export(location.path, location.name, model_version(location.path))
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"ONNX export of {location.name} ({location.source}): {export.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
