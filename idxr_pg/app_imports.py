"""Importing modules of the user's application (models named in the config, `init --models`)."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


class ApplicationImportError(Exception):
    """The module could not be imported; the message says why (callers add their context)."""


def import_application_module(module_name: str) -> ModuleType:
    """Import ``module_name``, searching the current directory too (after everything else).

    Like uvicorn and celery do, so `idxr-pg` run from an application's root finds its modules.
    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ApplicationImportError(
            f"cannot import module {module_name!r}: {exc} (run from the application's root "
            "or put it on PYTHONPATH)"
        ) from exc
    except Exception as exc:
        raise ApplicationImportError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
