"""What every command shares: the database URL, the config file, and opening the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import click
import psycopg

from idxr_pg.config import IdxrConfig, load_config
from idxr_pg.db.connection import DatabaseError, connect, redact


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

    @contextmanager
    def db(self, *, autocommit: bool = True, vector: bool = True) -> Iterator[psycopg.Connection]:
        """A connection to --database-url; a database without the idxr schema (a missing
        idxr table) gets a clear message saying to run `idxr-pg migrate`."""
        try:
            with connect(self.database_url, autocommit=autocommit, vector=vector) as conn:
                yield conn
        except psycopg.errors.UndefinedTable as exc:
            raise DatabaseError(
                f"{redact(self.database_url)} has no (or an older) idxr schema "
                f"({str(exc).splitlines()[0]}): run `idxr-pg migrate`"
            ) from None


pass_app = click.make_pass_decorator(AppContext)
