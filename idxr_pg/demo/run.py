"""`idxr-pg demo`: the main job end to end, on a database of its own.

Every step runs the product's real code paths the way its users would: the DBA's commands
(`idxr-pg migrate`, `idxr-pg triggers install`) and the operator's (`backfill`, `worker`,
`search`, `status`) as subprocesses of the real CLI, the application's writes and the SQL
user's queries as plain SQL. Each step checks what it shows and raises DemoError if the
product did not behave as shown, so the command exits non-zero.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path

import psycopg
import yaml
from psycopg import sql
from rich.console import Console
from rich.table import Table

from idxr_pg.db.connection import connect, redact
from idxr_pg.demo import data as demo_data
from idxr_pg.demo.queries import query
from idxr_pg.errors import IdxrError

DEMO_DATABASE = "idxr_demo"
KIND = "subscription"
console = Console(highlight=False)


class DemoError(IdxrError):
    """A demo step did not behave as shown."""


@dataclass(frozen=True)
class Change:
    """What one application write cost: commit-to-searchable time and texts embedded."""

    seconds: float
    texts_embedded: int
    rows_changed: int


def _read(name: str) -> str:
    return resources.files("idxr_pg.demo").joinpath(name).read_text(encoding="utf-8")


def demo_config(subscriptions: int) -> dict:
    """The idxr.yaml a user of this application would write."""
    return {
        "entities": [
            {
                "name": KIND,
                "model": "idxr_pg.demo.models:Subscription",
                "table": "demo.subscriptions",
                "key": "subscription_id",
                "document": _read("document.sql"),
                "watch": [{"table": "demo.product_blocks", "key": "subscription_id"}],
                "refresh": "on_change",
            }
        ],
        "worker": {"poll_interval": 1.0, "batch_size": 64},
    }


def _database_url(server_url: str, name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(server_url)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)


def recreate_database(server_url: str, name: str) -> str:
    with connect(server_url, autocommit=True, vector=False) as admin:
        for statement in ("drop_database", "create_database"):
            admin.execute(sql.SQL(query(statement)).format(name=sql.Identifier(name)))
    return _database_url(server_url, name)


class Demo:
    def __init__(
        self, server_url: str, subscriptions: int, workdir: Path, database: str = DEMO_DATABASE
    ) -> None:
        self.server_url = server_url
        self.database = database
        self.subscriptions = subscriptions
        self.workdir = workdir
        self.url = ""
        self.config_path = workdir / "idxr.yaml"
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log = workdir / "worker.log"

    # -- helpers --

    def step(self, number: int, title: str) -> None:
        console.rule(f"[bold]{number}. {title}")

    def cli(self, *args: str, capture: bool = False) -> str:
        command = [sys.executable, "-m", "idxr_pg", "--database-url", self.url,
                   "--config", str(self.config_path), *args]  # fmt: skip
        shown = " ".join(["idxr-pg", *args])
        console.print(f"[dim]$ {shown}[/dim]")
        # Captured output is shown again below: give tables a terminal-like width.
        env = {**os.environ, "COLUMNS": os.environ.get("COLUMNS", "140")}
        result = subprocess.run(command, capture_output=capture, text=True, env=env)
        if result.returncode != 0:
            detail = (result.stderr or "").strip() if capture else ""
            raise DemoError(f"`{shown}` exited with {result.returncode}. {detail}".strip())
        if capture:
            console.print(result.stdout.rstrip())
        return result.stdout if capture else ""

    def conn(self) -> psycopg.Connection:
        return connect(self.url, autocommit=True)

    # -- steps --

    def create_application(self) -> None:
        self.step(1, "An application database with its own tables and models")
        self.url = recreate_database(self.server_url, self.database)
        dataset = demo_data.generate(self.subscriptions)
        with connect(self.url, vector=False) as conn:
            conn.execute(_read("schema.sql"))
            demo_data.load(conn, dataset)
        self.config_path.write_text(
            yaml.safe_dump(demo_config(self.subscriptions), sort_keys=False)
        )
        console.print(
            f"database {redact(self.url)}: {len(dataset.customers)} customers, "
            f"{len(dataset.products)} products, {len(dataset.subscriptions)} subscriptions, "
            f"{len(dataset.blocks)} product blocks (tables demo.*)"
        )
        console.print("models: idxr_pg.demo.models:Subscription; config: " + str(self.config_path))

    def install(self) -> None:
        self.step(2, "Install idxr-pg as a DBA would: migrations, then capture triggers")
        self.cli("migrate", capture=True)
        self.cli("triggers", "install", "--allow-superuser", capture=True)
        with self.conn() as conn:
            triggers = conn.execute(query("count_capture_triggers")).fetchone()[0]
        if triggers < 8:
            raise DemoError(
                f"expected 8 capture triggers on the two watched tables, found {triggers}"
            )

    def backfill(self) -> None:
        self.step(3, "Backfill the existing rows (progress bar on a terminal)")
        started = time.perf_counter()
        self.cli("backfill", KIND, "--allow-superuser")
        elapsed = time.perf_counter() - started
        with self.conn() as conn:
            entities, records, embedded = conn.execute(query("index_counts"), [KIND]).fetchone()
            texts = conn.execute(query("cached_texts")).fetchone()[0]
        if entities != self.subscriptions:
            raise DemoError(f"backfill indexed {entities} of {self.subscriptions} subscriptions")
        console.print(
            f"indexed {entities} subscriptions as {records} field records ({embedded} with "
            f"vectors; {texts} distinct texts embedded) in {elapsed:.1f} s"
        )

    def start_worker(self) -> None:
        self.step(4, "Start a worker, then write to the application tables with plain SQL")
        command = [sys.executable, "-m", "idxr_pg", "--database-url", self.url,
                   "--config", str(self.config_path), "worker", "--allow-superuser"]  # fmt: skip
        console.print(f"[dim]$ idxr-pg worker --allow-superuser   (log: {self.worker_log})[/dim]")
        log = self.worker_log.open("wb")
        self.worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        with self.conn() as conn:
            while time.monotonic() < deadline:
                if self.worker.poll() is not None:
                    raise DemoError(f"the worker exited early; see {self.worker_log}")
                live = conn.execute(query("live_workers")).fetchone()[0]
                if live:
                    return
                time.sleep(0.2)
        raise DemoError("the worker did not report a heartbeat within 120 s")

    def _apply(
        self,
        title: str,
        statements: list[tuple[str, list]],
        done: Callable[[psycopg.Connection], bool],
    ) -> Change:
        with self.conn() as conn:
            with conn.transaction():
                for statement, params in statements:
                    conn.execute(statement, params)
                committed_at = conn.execute(query("now")).fetchone()[0]
            started = time.perf_counter()
            deadline = time.monotonic() + 60
            while not done(conn):
                if time.monotonic() > deadline:
                    raise DemoError(f"{title}: not searchable after 60 s; see {self.worker_log}")
                time.sleep(0.01)
            seconds = time.perf_counter() - started
            texts = conn.execute(query("texts_cached_since"), [committed_at]).fetchone()[0]
            rows = conn.execute(query("rows_written_since"), [committed_at]).fetchone()[0]
        change = Change(seconds, texts, rows)
        console.print(
            f"[green]✓[/green] {title}: in the index {change.seconds * 1000:.0f} ms after commit, "
            f"{change.texts_embedded} text(s) embedded, {change.rows_changed} row(s) written"
        )
        return change

    def application_writes(self) -> list[Change]:
        new_id = str(uuid.uuid4())
        with self.conn() as conn:
            customer_id, product_id = conn.execute(query("first_subscription_refs")).fetchone()
            target = conn.execute(query("second_subscription_id")).fetchone()[0]

        def rows_of(entity_id: str) -> Callable[[psycopg.Connection], int]:
            return lambda c: c.execute(query("entity_rows"), [KIND, entity_id]).fetchone()[0]

        def value_at(entity_id: str, path: str) -> Callable[[psycopg.Connection], str | None]:
            def read(c: psycopg.Connection) -> str | None:
                row = c.execute(query("value_at_path"), [KIND, entity_id, path]).fetchone()
                return row[0] if row else None

            return read

        changes = []
        description = "Quantum key distribution link for the Delft quantum networking testbed"
        changes.append(
            self._apply(
                "INSERT a subscription and its product block",
                [
                    (
                        query("insert_subscription"),
                        [new_id, customer_id, product_id, description, datetime.now().date()],
                    ),
                    (query("insert_product_block"), [new_id]),
                ],
                lambda c: value_at(new_id, f"{KIND}.blocks.0.location")(c) == "Delft",
            )
        )
        updated = "Backup fiber route for the hospital's radiology image archive"
        update = self._apply(
            "UPDATE one text field (description)",
            [(query("update_description"), [updated, target])],
            lambda c: value_at(target, f"{KIND}.description")(c) == updated,
        )
        if update.texts_embedded != 1 or update.rows_changed != 1:
            raise DemoError(
                f"a one-field update should embed 1 text and write 1 row, got "
                f"{update.texts_embedded} and {update.rows_changed}"
            )
        changes.append(update)
        block_text = "Upgraded to 400G coherent optics for the radio telescope data stream"
        changes.append(
            self._apply(
                "UPDATE the child table (a product block's description)",
                [(query("update_block_description"), [block_text, target])],
                lambda c: value_at(target, f"{KIND}.blocks.0.description")(c) == block_text,
            )
        )
        changes.append(
            self._apply(
                "DELETE the new subscription",
                [
                    (query("delete_product_blocks"), [new_id]),
                    (query("delete_subscription"), [new_id]),
                ],
                lambda c: rows_of(new_id)(c) == 0,
            )
        )
        self.updated_target = target
        return changes

    def searches(self) -> None:
        self.step(5, "Similarity search with LTree path filters: SQL and the CLI")
        with self.conn() as conn:
            shown = query("similar_descriptions").format(kind=KIND)
            console.print(f"[dim]SQL> {shown}[/dim]")
            rows = conn.execute(shown, [self.updated_target]).fetchall()
            self._table(["entity_id", "path", "value", "distance"], rows)
            if not rows:
                raise DemoError("idxr.similar_to returned nothing")
            shown = query("nearest_block_descriptions").format(kind=KIND)
            console.print(f"[dim]SQL> {shown}[/dim]")
            rows = conn.execute(shown, [self.updated_target]).fetchall()
            self._table(["entity_id", "path", "value"], rows)
            if not all(".blocks." in str(row[1]) for row in rows) or not rows:
                raise DemoError("the path filter let through rows outside subscription.blocks")
        out = self.cli(
            "search", "radiology images backup for a hospital", "--path", f"{KIND}.description",
            "-k", "3", capture=True,
        )  # fmt: skip
        if "radiology" not in out:
            raise DemoError("the CLI search did not rank the updated description first")
        self.cli("search", "fast optical link for astronomy", "--entities", "-k", "3", capture=True)

    def status(self) -> None:
        self.step(6, "Status, then stop the worker cleanly")
        self.cli("status", capture=True)
        self.stop_worker()

    def stop_worker(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            return
        self.worker.send_signal(signal.SIGTERM)
        try:
            code = self.worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            raise DemoError("the worker did not stop within 60 s of SIGTERM") from None
        if code != 0:
            raise DemoError(f"the worker exited with {code} on SIGTERM; see {self.worker_log}")
        console.print("worker stopped cleanly (exit 0)")

    @staticmethod
    def _table(columns: list[str], rows: list[tuple]) -> None:
        table = Table(*columns)
        for row in rows:
            table.add_row(*(str(value) for value in row))
        console.print(table)

    def run(self) -> list[Change]:
        try:
            self.create_application()
            self.install()
            self.backfill()
            self.start_worker()
            changes = self.application_writes()
            self.searches()
            self.status()
            return changes
        finally:
            self.stop_worker_quietly()

    def stop_worker_quietly(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.kill()
            self.worker.wait()


def run_demo(
    server_url: str,
    subscriptions: int = 300,
    workdir: Path | None = None,
    database: str = DEMO_DATABASE,
) -> list[Change]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="idxr-demo-") as tmp:
        demo = Demo(server_url, subscriptions, Path(workdir or tmp), database)
        changes = demo.run()
    console.rule("[bold green]demo complete")
    return changes
