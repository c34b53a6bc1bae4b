"""Deterministic sample data for the demo: customers, products, subscriptions and blocks."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import date, timedelta

import psycopg

from idxr_pg.demo.queries import query

PRODUCTS: list[tuple[str, str, str]] = [
    (
        "Fiber Internet 10G",
        "Dedicated 10 gigabit fiber internet access with redundant uplinks and 24/7 monitoring",
        "internet",
    ),
    (
        "Fiber Internet 1G",
        "Dedicated 1 gigabit fiber internet connection for offices and small campuses",
        "internet",
    ),
    (
        "Layer 2 VPN",
        "Private point-to-point ethernet circuit between two sites over the national backbone",
        "l2vpn",
    ),
    (
        "Layer 3 VPN",
        "Routed private network (MPLS VPN) connecting many branch offices of one organisation",
        "l3vpn",
    ),
    (
        "IP Transit",
        "Full-table BGP transit to the global internet with DDoS scrubbing included",
        "internet",
    ),
    (
        "Optical Wavelength",
        "Dedicated 100G optical wavelength on the DWDM network for data center interconnect",
        "optical",
    ),
    (
        "Dark Fiber Pair",
        "Leased pair of unlit fiber strands between two locations for customer-managed optics",
        "optical",
    ),
    (
        "Managed Firewall",
        "Firewall as a service with intrusion prevention, VPN termination and policy management",
        "security",
    ),
    (
        "DDoS Protection",
        "Always-on detection and mitigation of volumetric denial-of-service attacks",
        "security",
    ),
    (
        "Cloud Connect",
        "Private low-latency connection to public cloud providers without crossing the internet",
        "cloud",
    ),
    (
        "Eduroam Wireless",
        "Campus wifi with federated roaming login for students and researchers",
        "wireless",
    ),
    (
        "Video Conferencing",
        "Hosted video meeting rooms with recording and streaming for lectures",
        "collaboration",
    ),
]

CUSTOMER_KINDS: list[tuple[str, str]] = [
    ("University of {city}", "education"),
    ("{city} University Medical Center", "healthcare"),
    ("Municipality of {city}", "government"),
    ("{city} Public Library", "culture"),
    ("{city} Research Institute", "research"),
    ("{city} College of Applied Sciences", "education"),
    ("{city} Regional Hospital", "healthcare"),
]

CITIES = [
    "Amsterdam", "Utrecht", "Rotterdam", "Groningen", "Eindhoven", "Leiden", "Delft",
    "Nijmegen", "Maastricht", "Tilburg", "Enschede", "Zwolle", "Arnhem", "Haarlem",
]  # fmt: skip

BLOCK_KINDS: list[tuple[str, str, list[int]]] = [
    ("Access Port", "Customer-facing access port on the edge router at {site}", [1000, 10000]),
    (
        "Backbone Circuit",
        "Protected backbone circuit from {site} to the core ring",
        [10000, 100000],
    ),
    ("Optical Transponder", "Coherent transponder terminating the wavelength at {site}", [100000]),
    ("Firewall Cluster", "High-availability firewall pair hosted at {site}", [1000, 10000]),
    (
        "Wireless Controller",
        "Controller managing the access points of the campus at {site}",
        [1000],
    ),
    ("Peering Session", "BGP session with route filtering and RPKI validation at {site}", [10000]),
]
SITES = [
    "the main campus",
    "the data center",
    "the city hall",
    "the hospital wing",
    "the science park",
]

PURPOSES = [
    "for the student housing network",
    "connecting the campus to the national research backbone",
    "for the hospital's medical imaging archive",
    "linking the city's two data centers",
    "serving the public library branches",
    "for the genomics research cluster",
    "carrying traffic of the emergency services dispatch",
    "backing up the administration systems off-site",
    "for lecture streaming and remote education",
    "reaching the cloud provider for the payroll system",
]
STATUSES = ["active"] * 8 + ["provisioning", "terminated"]


@dataclass(frozen=True)
class DemoData:
    customers: list[tuple[str, str, str]]
    products: list[tuple[uuid.UUID, str, str, str]]
    subscriptions: list[tuple[uuid.UUID, str, uuid.UUID, str, str, date, bool]]
    blocks: list[tuple[uuid.UUID, int, str, str, int, str]]


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def generate(subscriptions: int = 300, seed: int = 7) -> DemoData:
    """Build the same data set for the same arguments."""
    rng = random.Random(seed)
    products = [(_uuid(rng), name, text, kind) for name, text, kind in PRODUCTS]
    customers = []
    for index, city in enumerate(CITIES):
        for template, segment in CUSTOMER_KINDS:
            customer_id = f"cust-{index:02d}-{segment[:3]}"
            if any(c[0] == customer_id for c in customers):
                customer_id += f"-{len(customers)}"
            customers.append((customer_id, template.format(city=city), segment))
    subs = []
    blocks = []
    start = date(2019, 1, 1)
    for _ in range(subscriptions):
        product = rng.choice(products)
        customer = rng.choice(customers)
        city = customer[1].split(" of ")[-1].split(" ")[0]
        purpose = rng.choice(PURPOSES)
        subscription_id = _uuid(rng)
        description = f"{product[1]} for {customer[1]} {purpose}"
        subs.append(
            (
                subscription_id,
                customer[0],
                product[0],
                description,
                rng.choice(STATUSES),
                start + timedelta(days=rng.randrange(0, 2400)),
                rng.random() > 0.05,
            )
        )
        for position in range(rng.randint(1, 3)):
            name, text, speeds = rng.choice(BLOCK_KINDS)
            site = f"{rng.choice(SITES)} in {city}"
            blocks.append(
                (subscription_id, position, name, text.format(site=site), rng.choice(speeds), city)
            )
    return DemoData(customers, products, subs, blocks)


def load(conn: psycopg.Connection, data: DemoData) -> None:
    """Insert the data with plain SQL, as the application would."""
    with conn.cursor() as cur:
        cur.executemany(query("insert_customer"), data.customers)
        cur.executemany(query("insert_product"), data.products)
        cur.executemany(query("insert_subscription_row"), data.subscriptions)
        cur.executemany(query("insert_product_block_row"), data.blocks)
