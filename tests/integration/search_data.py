"""A small, realistic catalogue for the search tests: products and subscriptions.

`index_catalogue` flattens the Pydantic instances with `idxr_pg.records.traverse.flatten`, embeds the
embeddable records with the given embedder and writes them to ``idxr.search_index``,
recording the kinds and the model as the worker does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import date
from typing import Any, Literal

import psycopg
from pydantic import BaseModel

from idxr_pg.config import IdxrConfig
from idxr_pg.db.connection import connect
from idxr_pg.records.traverse import flatten
from idxr_pg.search import SearchHit, search

CONFIG = IdxrConfig()  # the default model, all-MiniLM-L6-v2


class Block(BaseModel):
    name: str
    value: int


class Product(BaseModel):
    name: str
    description: str
    category: str
    basic_block: Block


class Subscription(BaseModel):
    customer: str
    description: str
    status: Literal["active", "cancelled"]
    seats: int
    start_date: date
    product: Product


PRODUCTS: dict[str, Product] = {
    "fiber": Product(
        name="Fiber Internet 1 Gbps",
        description="Symmetric fibre-optic broadband connection for offices, with a static IP address.",
        category="connectivity",
        basic_block=Block(name="bandwidth", value=1000),
    ),
    "backup": Product(
        name="Cloud Backup",
        description="Encrypted off-site backup of servers and laptops, with daily snapshots kept for 90 days.",
        category="storage",
        basic_block=Block(name="retention days", value=90),
    ),
    "firewall": Product(
        name="Managed Firewall",
        description="A managed firewall service that protects the office network from intrusions and malware.",
        category="security",
        basic_block=Block(name="protected devices", value=50),
    ),
    "firewall-plus": Product(
        name="Managed Firewall Plus",
        description="Managed firewall service protecting your office network against intrusion attempts and malware.",
        category="security",
        basic_block=Block(name="protected devices", value=200),
    ),
    "voip": Product(
        name="Business Phone",
        description="Hosted VoIP telephony with call forwarding, voicemail and conference calls.",
        category="telephony",
        basic_block=Block(name="phone lines", value=10),
    ),
    "email": Product(
        name="Hosted Email",
        description="Professional email hosting with spam filtering and shared calendars.",
        category="collaboration",
        basic_block=Block(name="mailboxes", value=25),
    ),
    "wifi": Product(
        name="Guest Wi-Fi",
        description="Wireless internet access for visitors in shops, hotels and waiting rooms.",
        category="connectivity",
        basic_block=Block(name="access points", value=4),
    ),
    "helpdesk": Product(
        name="IT Helpdesk",
        description="Round-the-clock support desk for hardware and software problems, by phone or on site.",
        category="support",
        basic_block=Block(name="response hours", value=4),
    ),
    "colocation": Product(
        name="Rack Colocation",
        description="Space, power and cooling for your own servers in our secure data centre.",
        category="hosting",
        basic_block=Block(name="rack units", value=42),
    ),
    "video": Product(
        name="Video Conferencing",
        description="HD video meetings for up to 100 participants with screen sharing and recording.",
        category="collaboration",
        basic_block=Block(name="participants", value=100),
    ),
}

SUBSCRIPTIONS: dict[str, Subscription] = {
    "s1": Subscription(
        customer="Acme Corporation",
        description="Headquarters uplink for the Acme head office in Rotterdam.",
        status="active",
        seats=120,
        start_date=date(2023, 3, 1),
        product=PRODUCTS["fiber"],
    ),
    "s2": Subscription(
        customer="Bakery Jansen",
        description="Nightly copies of the shop's ordering system.",
        status="active",
        seats=3,
        start_date=date(2024, 6, 15),
        product=PRODUCTS["backup"],
    ),
    "s3": Subscription(
        customer="Dental Clinic Smile",
        description="Protection of the patient records network at the clinic.",
        status="active",
        seats=45,
        start_date=date(2024, 1, 10),
        product=PRODUCTS["firewall"],
    ),
    "s4": Subscription(
        customer="Hotel Zeezicht",
        description="Internet for hotel guests in rooms and the lobby.",
        status="active",
        seats=80,
        start_date=date(2022, 11, 20),
        product=PRODUCTS["wifi"],
    ),
    "s5": Subscription(
        customer="Law Firm Van Dam",
        description="Telephone lines for the reception and the partners.",
        status="cancelled",
        seats=12,
        start_date=date(2021, 5, 4),
        product=PRODUCTS["voip"],
    ),
    "s6": Subscription(
        customer="Greenhouse Cooperative",
        description="Weekly meetings with growers across the region.",
        status="active",
        seats=60,
        start_date=date(2024, 9, 2),
        product=PRODUCTS["video"],
    ),
    "s7": Subscription(
        customer="City Library",
        description="Mail accounts for all library staff.",
        status="cancelled",
        seats=30,
        start_date=date(2020, 2, 1),
        product=PRODUCTS["email"],
    ),
    "s8": Subscription(
        customer="Logistics Partner BV",
        description="Servers of the warehouse management system in a rented rack.",
        status="active",
        seats=8,
        start_date=date(2024, 12, 1),
        product=PRODUCTS["colocation"],
    ),
}


def entities() -> list[tuple[str, str, BaseModel]]:
    """(kind, id, instance) for every entity of the catalogue."""
    return [("product", key, p) for key, p in PRODUCTS.items()] + [
        ("subscription", key, s) for key, s in SUBSCRIPTIONS.items()
    ]


def register_model(conn: psycopg.Connection, embedder, kinds: list[str]) -> None:
    """Record the model and the kinds the way the worker's registry does."""
    conn.execute(
        "INSERT INTO idxr.embedding_models (name, version, dimensions, max_tokens)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET version = excluded.version,"
        " dimensions = excluded.dimensions, max_tokens = excluded.max_tokens",
        [embedder.name, embedder.version, embedder.dimensions, embedder.max_tokens],
    )
    for kind in kinds:
        conn.execute(
            "INSERT INTO idxr.entity_kinds (name, model_name) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET model_name = excluded.model_name",
            [kind, embedder.name],
        )


def index_catalogue(conn: psycopg.Connection, embedder) -> int:
    """Flatten, embed and store every entity; returns the number of records written."""
    rows = []
    for kind, key, instance in entities():
        for record in flatten(instance, kind):
            rows.append((kind, key, record))
    texts = [record.embedding_text for _, _, record in rows if record.embeddable]
    vectors = iter(embedder.embed(texts))
    with conn.transaction():
        register_model(conn, embedder, ["product", "subscription"])
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO idxr.search_index"
                " (entity_kind, entity_id, path, value, value_type, content_hash, embedding)"
                " VALUES (%s, %s, %s::ltree, %s, %s::idxr.value_type, %s, %s)",
                [
                    (
                        kind,
                        key,
                        record.path,
                        record.value,
                        record.value_type.value,
                        record.content_hash,
                        next(vectors) if record.embeddable else None,
                    )
                    for kind, key, record in rows
                ],
            )
    conn.execute("ANALYZE idxr.search_index")
    return len(rows)


def default_embedder():
    """The real default model (all-MiniLM-L6-v2), as ``CONFIG`` loads it."""
    from idxr_pg.embedding import load_embedder

    return load_embedder(CONFIG.embedding)


def catalogue_database(
    create_database: Callable[..., str], template_database: str, embedder, prefix: str
) -> str:
    """A database holding the catalogue, embedded with ``embedder`` (read-only for tests)."""
    url = create_database(f"{prefix}{uuid.uuid4().hex[:6]}", template=template_database)
    with connect(url, autocommit=True) as conn:
        index_catalogue(conn, embedder)
    return url


def find(url: str, text: str, **kwargs: Any) -> list[SearchHit]:
    """`idxr_pg.search` over ``url`` with the default model."""
    return search(text, database_url=url, config=CONFIG, **kwargs)


def entity(hit: SearchHit) -> tuple[str, str]:
    return hit.entity_kind, hit.entity_id
