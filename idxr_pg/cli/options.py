"""Options that several commands share, declared once (each command keeps its own help text)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_flag(help: str) -> Callable[[F], F]:
    """``--json``, passed as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def batch_size_option(help: str) -> Callable[[F], F]:
    """``--batch-size``: entities per pipeline batch; None means the config's worker.batch_size."""
    return click.option("--batch-size", type=click.IntRange(1, 10_000), default=None, help=help)


def kinds_option(help: str) -> Callable[[F], F]:
    """``--kind KIND``, repeatable, passed as the tuple ``kinds``."""
    return click.option("--kind", "kinds", multiple=True, metavar="KIND", help=help)


def count_option(name: str, count: Any, default: int, help: str) -> Callable[[F], F]:
    """A count such as ``--limit`` or ``-k`` (``count``: its click type), default shown."""
    return click.option(name, type=count, default=default, show_default=True, help=help)
