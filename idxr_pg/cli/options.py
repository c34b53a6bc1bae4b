"""Options that several commands share, declared once (each command keeps its own help text)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from idxr_pg.runtime.superuser import ALLOW_SUPERUSER_ENV

F = TypeVar("F", bound=Callable[..., Any])


def _allow_superuser(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ[ALLOW_SUPERUSER_ENV] = "1"  # read by runtime/superuser.refuse_superuser


def allow_superuser_flag(f: F) -> F:
    """``--allow-superuser``: run even when connected as a superuser (the default refuses; see
    `idxr_pg.runtime.superuser`). Sets ``IDXR_ALLOW_SUPERUSER=1`` for this run."""
    return click.option(
        "--allow-superuser",
        is_flag=True,
        expose_value=False,
        callback=_allow_superuser,
        help="Run even when connected as a superuser (refused by default: the owners of the "
        f"watched tables could run code with its rights). Also {ALLOW_SUPERUSER_ENV}=1.",
    )(f)


def json_flag(help: str) -> Callable[[F], F]:
    """``--json``, passed as ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def batch_size_option(help: str) -> Callable[[F], F]:
    """``--batch-size``: entities per pipeline batch; None means the config's default
    (``backfill.batch_size`` for the jobs that walk a kind, ``worker.batch_size`` for a worker)."""
    return click.option("--batch-size", type=click.IntRange(1, 10_000), default=None, help=help)


def progress_interval_option(f: F) -> F:
    """``--progress-interval``: seconds between progress log lines off a terminal."""
    return click.option(
        "--progress-interval",
        type=click.FloatRange(min=0.1),
        default=10.0,
        show_default=True,
        help="Seconds between progress log lines when stderr is not a terminal.",
    )(f)


def kinds_option(help: str) -> Callable[[F], F]:
    """``--kind KIND``, repeatable, passed as the tuple ``kinds``."""
    return click.option("--kind", "kinds", multiple=True, metavar="KIND", help=help)


def count_option(name: str, count: Any, default: int, help: str) -> Callable[[F], F]:
    """A count such as ``--limit`` or ``-k`` (``count``: its click type), default shown."""
    return click.option(name, type=count, default=default, show_default=True, help=help)
