"""What every command shares: database URL, config file, and turning errors into messages."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from idxr_pg.config import IdxrConfig, load_config

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class AppContext:
    database_url: str
    config_path: Path | None
    _config: IdxrConfig | None = field(default=None, repr=False)

    @property
    def config(self) -> IdxrConfig:
        """The YAML config, loaded on first use (commands that don't need it never read it)."""
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config


pass_app = click.make_pass_decorator(AppContext)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
