"""The one superuser check of the commands that run application SQL: the worker, a backfill
and `triggers install` refuse a superuser connection unless allowed (issue 12, item 8).

Why: the worker reads the watched tables, so whatever their owners attach to them (a
domain CHECK, a policy, a function a `document` query calls) runs as the worker's role; the
capture functions run as the role that installed them (SECURITY DEFINER). As a superuser,
either hands an application table's owner superuser rights. Allowed by ``--allow-superuser``
on those commands, which sets `ALLOW_SUPERUSER_ENV` (``IDXR_ALLOW_SUPERUSER=1``) for the run.
"""

from __future__ import annotations

import os

import psycopg

from idxr_pg.errors import IdxrError

__all__ = ["ALLOW_SUPERUSER_ENV", "SuperuserRefused", "refuse_superuser", "superuser_allowed"]

ALLOW_SUPERUSER_ENV = "IDXR_ALLOW_SUPERUSER"


class SuperuserRefused(IdxrError):
    """Connected as a superuser without ``--allow-superuser`` (the message names the role)."""


def superuser_allowed() -> bool:
    return os.environ.get(ALLOW_SUPERUSER_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def refuse_superuser(conn: psycopg.Connection, action: str) -> None:
    """Raise `SuperuserRefused` when ``conn``'s role is a superuser and that is not allowed.

    Reads what the server reports at connect (``is_superuser``, ``session_authorization``):
    no query."""
    if superuser_allowed() or conn.info.parameter_status("is_superuser") != "on":
        return
    role = conn.info.parameter_status("session_authorization") or conn.info.user
    raise SuperuserRefused(
        f"refusing to {action} as role {role!r}, a superuser (the owners of the watched tables "
        "could run code with its rights): connect as a least-privilege role (README: Roles and "
        f"grants) or pass --allow-superuser ({ALLOW_SUPERUSER_ENV}=1)"
    )
