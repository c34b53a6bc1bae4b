"""Backend and precision: chosen from the CPU's flags, overridden by the config, checked;
and the cache key / model identity that keep vectors of different numeric paths apart."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from idxr_pg.config import EmbeddingSettings, load_config
from idxr_pg.embedding import ModelLoadError, load_embedder
from idxr_pg.embedding.cache import embedding_cache_key
from idxr_pg.embedding.device import (
    NumericPath,
    choose_backend,
    cpu_flags,
    cpu_has_fast_int8,
)
from idxr_pg.embedding.onnx_export import cache_root, export_dir
from idxr_pg.embedding.resolve import identity_version

SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16"}
CASCADE_LAKE = {"avx2", "avx512f", "avx512_vnni"}  # VNNI, no bf16
ALDER_LAKE = {"avx2", "avx_vnni"}  # AVX-VNNI only
ZEN3 = {"avx2", "fma"}  # neither
ARM = {"asimd", "asimddp"}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (SAPPHIRE_RAPIDS, NumericPath("torch", "bfloat16")),
        ({"amx_bf16", "amx_int8"}, NumericPath("torch", "bfloat16")),
        # int8 dot products alone do not pick ONNX int8: it misses the retrieval-quality bar
        (CASCADE_LAKE, NumericPath("torch", "float32")),
        (ALDER_LAKE, NumericPath("torch", "float32")),
        ({"avx2", "amx_int8"}, NumericPath("torch", "float32")),
        (ZEN3, NumericPath("torch", "float32")),
        (ARM, NumericPath("torch", "float32")),
        (set(), NumericPath("torch", "float32")),
    ],
)
def test_auto_follows_the_cpu_flags(flags: set[str], expected: NumericPath) -> None:
    assert choose_backend("cpu", "auto", "auto", flags) == expected


def test_auto_on_a_gpu_is_torch() -> None:
    assert choose_backend("cuda:0", "auto", "float32", CASCADE_LAKE) == NumericPath(
        "torch", "float32"
    )
    assert choose_backend("mps", "auto", "auto", CASCADE_LAKE) == NumericPath("torch", "float32")


@pytest.mark.parametrize(
    ("backend", "precision", "flags", "expected"),
    [
        ("torch", "auto", CASCADE_LAKE, NumericPath("torch", "float32")),
        ("torch", "auto", SAPPHIRE_RAPIDS, NumericPath("torch", "bfloat16")),
        ("torch", "float32", SAPPHIRE_RAPIDS, NumericPath("torch", "float32")),
        ("torch", "bfloat16", ZEN3, NumericPath("torch", "bfloat16")),
        ("onnx", "auto", SAPPHIRE_RAPIDS, NumericPath("onnx", "int8")),
        ("onnx", "auto", ZEN3, NumericPath("onnx", "float32")),
        ("onnx", "int8", ZEN3, NumericPath("onnx", "int8")),
        ("onnx", "float32", CASCADE_LAKE, NumericPath("onnx", "float32")),
        ("auto", "int8", ZEN3, NumericPath("onnx", "int8")),
        ("auto", "float32", CASCADE_LAKE, NumericPath("torch", "float32")),
        ("auto", "bfloat16", CASCADE_LAKE, NumericPath("torch", "bfloat16")),
    ],
)
def test_config_overrides_the_choice(
    backend: str, precision: str, flags: set[str], expected: NumericPath
) -> None:
    assert choose_backend("cpu", backend, precision, flags) == expected


@pytest.mark.parametrize(
    ("device", "backend", "precision", "message"),
    [
        ("cpu", "torch", "int8", "int8 does not exist for backend torch"),
        ("cpu", "onnx", "bfloat16", "bfloat16 does not exist for backend onnx"),
        ("cuda", "onnx", "auto", "onnx runs on the CPU only"),
        ("cpu", "tensorflow", "auto", "unknown embedding.backend 'tensorflow'"),
        ("cpu", "auto", "fp16", "unknown embedding.precision 'fp16'"),
    ],
)
def test_impossible_combinations_are_refused(
    device: str, backend: str, precision: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        choose_backend(device, backend, precision, SAPPHIRE_RAPIDS)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backend": "torch", "precision": "int8"}, "precision 'int8' does not exist for backend"),
        ({"backend": "onnx", "precision": "bfloat16"}, "use auto or float32 or int8"),
        ({"backend": "openvino"}, "'auto', 'torch' or 'onnx'"),
        ({"precision": "fp16"}, "'auto', 'float32', 'bfloat16' or 'int8'"),
    ],
)
def test_settings_validate_backend_and_precision(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EmbeddingSettings(**fields)


def test_settings_accept_every_real_pair() -> None:
    for backend, precisions in {
        "torch": ("float32", "bfloat16"),
        "onnx": ("float32", "int8"),
    }.items():
        for precision in ("auto", *precisions):
            assert EmbeddingSettings(backend=backend, precision=precision).backend == backend
    assert EmbeddingSettings(precision="int8").backend == "auto"


def test_config_file_error_names_the_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "idxr.yaml"
    path.write_text("embedding:\n  backend: torch\n  precision: int8\nentities: []\n")
    with pytest.raises(Exception, match="precision") as caught:
        load_config(path)
    assert "int8" in str(caught.value)


def test_loader_refuses_onnx_on_a_gpu_before_loading() -> None:
    with pytest.raises(ModelLoadError, match="onnx runs on the CPU only"):
        load_embedder(EmbeddingSettings(backend="onnx", device="cuda"))


def test_int8_detection_reads_cpu_flags(tmp_path) -> None:  # type: ignore[no-untyped-def]
    vnni = tmp_path / "vnni"
    vnni.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_has_fast_int8(vnni) is True
    assert cpu_has_fast_int8(plain) is False
    assert cpu_has_fast_int8(tmp_path / "missing") is False
    assert "avx512_vnni" in cpu_flags(vnni)


def test_cache_key_names_backend_and_precision() -> None:
    keys = {
        embedding_cache_key("m", "abc", backend, precision)
        for backend, precision in [
            ("torch", "float32"),
            ("torch", "bfloat16"),
            ("onnx", "float32"),
            ("onnx", "int8"),
        ]
    }
    assert len(keys) == 4
    # torch float32 keeps the key from before backends existed: those cached vectors stay valid.
    assert embedding_cache_key("m", "abc", "torch", "float32") == "m@abc"
    assert embedding_cache_key("m", "abc", "onnx", "int8") == "m@abc+onnx-int8"
    assert embedding_cache_key("m", "abc", "torch", "bfloat16") == "m@abc+torch-bfloat16"


def test_model_identity_names_the_backend_not_torch_precision() -> None:
    assert identity_version("abc", "torch", "float32") == "abc"
    assert identity_version("abc", "torch", "bfloat16") == "abc"  # accepted, documented
    assert identity_version("abc", "onnx", "int8") == "abc+onnx-int8"
    assert identity_version("abc", "onnx", "float32") == "abc+onnx-float32"
    # For ONNX the cache key and the recorded model identity agree.
    assert embedding_cache_key("m", "abc", "onnx", "int8") == "m@" + identity_version(
        "abc", "onnx", "int8"
    )


def test_export_lives_in_the_cache_directory(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("IDXR_PG_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "idxr-pg"
    monkeypatch.setenv("IDXR_PG_CACHE_DIR", str(tmp_path / "own"))
    assert cache_root() == tmp_path / "own"
    one = export_dir("all-MiniLM-L6-v2", "abc")
    assert one.parent == tmp_path / "own" / "onnx"
    assert export_dir("all-MiniLM-L6-v2", "abd") != one
    assert "/" not in export_dir("org/model", "abc").name
