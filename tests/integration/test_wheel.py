"""An installed wheel migrates: the Alembic environment ships inside the package.

The wheel is built from a copy of the package (so no build/ folder of the source tree, with
files left over from earlier builds, can leak into it), installed with --no-deps into a fresh
virtualenv that borrows the project's dependencies through a .pth file, and run from a folder
outside the source tree. The .pth only appends .venv's site-packages to sys.path: the .pth
files inside it (the editable install's finder among them) are not processed, so idxr_pg can
only come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import psycopg
import pytest

from idxr_pg.capture.library import SOURCE_FILES
from idxr_pg.db import migrations
from idxr_pg.schema import HEAD_REVISION, SCHEMA_FILES

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (
    "idxr_pg/migrations/env.py",
    "idxr_pg/migrations/script.py.mako",
    "idxr_pg/migrations/versions/0001_initial.py",
    *(f"idxr_pg/schema/{f.name}" for f in SCHEMA_FILES),
    *(f"idxr_pg/capture/c/{name}" for name in SOURCE_FILES),  # built by doctor (PGXS)
)


def run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("wheel-source")
    shutil.copytree(
        ROOT / "idxr_pg", source / "idxr_pg", ignore=shutil.ignore_patterns("__pycache__")
    )
    for path in [ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("LICEN[CS]E*")]:
        shutil.copy2(path, source / path.name)
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    run([*pip_wheel, "--quiet", "--wheel-dir", out, source], cwd=source)
    (built,) = out.glob("idxr_pg-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("fresh-venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv)
    python = venv / "bin" / "python"
    pip_install = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps"]
    run([*pip_install, "--no-index", "--quiet", wheel], cwd=venv)
    site_packages = run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv
    ).strip()
    # torch, sentence-transformers and friends come from the project's .venv, unreinstalled.
    (Path(site_packages) / "idxr_pg_test_deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return venv


def clean_env() -> dict[str, str]:
    """The caller's environment without anything that could point Python at the source tree."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"} and not key.startswith("IDXR_")
    }
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_the_wheel_ships_the_migrations(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(SHIPPED) <= names
    assert not any(name.startswith("alembic/") for name in names)


def test_an_installed_wheel_migrates_from_outside_the_source_tree(
    fresh_venv: Path, empty_database_url: str, tmp_path: Path
):
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = clean_env()
    located = run(
        [
            fresh_venv / "bin" / "python",
            "-c",
            "import idxr_pg, idxr_pg.db.migrations as m; print(idxr_pg.__file__); "
            "print(m.MIGRATIONS_DIR)",
        ],
        cwd=workdir,
        env=env,
    ).split()
    package_file, migrations_dir = (Path(line).resolve() for line in located)
    assert package_file.is_relative_to(fresh_venv.resolve()), package_file
    assert migrations_dir.is_relative_to(fresh_venv.resolve()), migrations_dir
    assert not package_file.is_relative_to(ROOT)

    idxr_pg = fresh_venv / "bin" / "idxr-pg"
    url = empty_database_url
    migrated = run([idxr_pg, "--database-url", url, "migrate"], cwd=workdir, env=env)
    assert f"migrated base -> {HEAD_REVISION}" in migrated
    doctor = run([idxr_pg, "--database-url", url, "doctor"], cwd=workdir, env=env)
    assert "vector" in doctor and "ltree" in doctor

    assert migrations.current_revision(url) == HEAD_REVISION
    with psycopg.connect(url) as conn:
        schema, table, view, search = conn.execute(
            """SELECT to_regnamespace('idxr'), to_regclass('idxr.search_index'),
                      to_regclass('idxr.status'),
                      to_regprocedure('idxr.search(vector, lquery, text, integer, jsonb)')"""
        ).fetchone()
    assert schema is not None and table is not None
    assert view is not None and search is not None  # the re-applied part ran too
