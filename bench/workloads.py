"""The entity sets the throughput benches index (issue 14), in the demo's tables and shape.

- ``demo``: `idxr_pg.demo.data.generate`, the demo's own data (what the tests use). It
  saturates: 14 cities x 7 customer kinds, 12 products, 6 block kinds x 5 sites, 10 purposes,
  so at 10,000 subscriptions there are ~8,400 distinct embeddable texts for ~140,000 vector
  rows; the model embeds each distinct text once (the cache), the index holds every row.
- ``fresh``: every subscription carries texts of its own, as a stream of new documents does:
  its own customer (a unique name), its own product (unique name and a description of 20-40
  words), a description of 30-60 words, and blocks with unique names and descriptions of
  15-30 words, built from a vocabulary with per-entity references (circuit ids, addresses,
  dates, contacts). Categorical fields (segment, product type, status, city) repeat, as they
  do in real data. Rows per distinct text ~1.1 (measured by the bench, printed).

Both are deterministic for (entities, seed).
"""

from __future__ import annotations

import random
import uuid
from datetime import date, timedelta

from idxr_pg.demo import data as demo_data
from idxr_pg.demo.data import DemoData

WORKLOADS = ("demo", "fresh")

_OPENINGS = [
    "Provides", "Delivers", "Operates", "Supplies", "Maintains", "Runs", "Offers", "Hosts",
]  # fmt: skip
_SERVICES = [
    "a redundant fiber connection", "a routed private network", "a protected optical link",
    "a managed security service", "a campus wireless network", "a cloud interconnect",
    "a point-to-point ethernet circuit", "a high-capacity transit port", "a video platform",
    "a dedicated wavelength", "a backup data link", "a monitored access port",
]  # fmt: skip
_USES = [
    "for the radiology department", "between the two lecture halls", "for the city archive",
    "towards the national research backbone", "for the student residences",
    "carrying the emergency dispatch traffic", "for the bioinformatics cluster",
    "serving the public library branches", "linking the regional hospitals",
    "for remote teaching and exams", "for the payroll and finance systems",
    "behind the museum's ticketing system", "for the water authority's sensors",
    "reaching the cloud region in Frankfurt", "for the high-performance computing centre",
]  # fmt: skip
_DETAILS = [
    "with a four-hour repair window", "monitored around the clock by the operations centre",
    "with automatic failover to a second path", "including quarterly capacity reviews",
    "scheduled for a hardware refresh next year", "with traffic shaping for video",
    "protected by route filtering and RPKI validation", "with a dedicated support contact",
    "billed per committed megabit", "with encrypted links between the sites",
    "sharing a duct with the municipal network", "under a five-year framework contract",
    "with a spare transceiver kept on site", "audited for the security baseline last spring",
]  # fmt: skip
_STREETS = [
    "Kanaalweg", "Stationsplein", "Universiteitslaan", "Havenstraat", "Oude Gracht",
    "Marktplein", "Parkweg", "Laan van Nieuw Oost", "Science Park", "Ziekenhuisweg",
]  # fmt: skip
_PEOPLE = ["J. de Vries", "M. Jansen", "A. Bakker", "S. Visser", "R. Smit", "E. Mulder"]


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _sentence(rng: random.Random, reference: str) -> str:
    return (
        f"{rng.choice(_OPENINGS)} {rng.choice(_SERVICES)} {rng.choice(_USES)}, "
        f"{rng.choice(_DETAILS)}; reference {reference}."
    )


def _text(rng: random.Random, words: tuple[int, int], reference: str) -> str:
    """Sentences until the text has between ``words`` words (each names the reference and a
    street number, so no two entities share one)."""
    low, high = words
    target = rng.randint(low, high)
    parts: list[str] = []
    while sum(len(p.split()) for p in parts) < target:
        parts.append(_sentence(rng, reference))
        if rng.random() < 0.5:
            parts.append(
                f"Site at {rng.choice(_STREETS)} {rng.randint(1, 400)}, contact "
                f"{rng.choice(_PEOPLE)}, since {date(2015, 1, 1) + timedelta(rng.randrange(3500))}."
            )
    return " ".join(" ".join(parts).split()[:target])


def fresh(entities: int, seed: int = 11) -> DemoData:
    """``entities`` subscriptions whose texts are their own (see the module docstring)."""
    rng = random.Random(seed)
    customers: list[tuple[str, str, str]] = []
    products: list[tuple[uuid.UUID, str, str, str]] = []
    subs: list[tuple[uuid.UUID, str, uuid.UUID, str, str, date, bool]] = []
    blocks: list[tuple[uuid.UUID, int, str, str, int, str]] = []
    start = date(2019, 1, 1)
    for n in range(entities):
        city = rng.choice(demo_data.CITIES)
        template, segment = rng.choice(demo_data.CUSTOMER_KINDS)
        customer_id = f"cust-{n:07d}"
        customers.append(
            (customer_id, f"{template.format(city=city)}, {rng.choice(_STREETS)} {n}", segment)
        )
        base, _, product_type = rng.choice(demo_data.PRODUCTS)
        ref = f"{product_type[:3].upper()}-{n:07d}"
        product_id = _uuid(rng)
        products.append((product_id, f"{base} {ref}", _text(rng, (20, 40), ref), product_type))
        subscription_id = _uuid(rng)
        subs.append(
            (
                subscription_id,
                customer_id,
                product_id,
                _text(rng, (30, 60), f"SUB-{n:07d}"),
                rng.choice(demo_data.STATUSES),
                start + timedelta(days=rng.randrange(0, 2400)),
                rng.random() > 0.05,
            )
        )
        for position in range(rng.randint(1, 3)):
            name, _, speeds = rng.choice(demo_data.BLOCK_KINDS)
            block_ref = f"BLK-{n:07d}-{position}"
            blocks.append(
                (
                    subscription_id,
                    position,
                    f"{name} {block_ref}",
                    _text(rng, (15, 30), block_ref),
                    rng.choice(speeds),
                    city,
                )
            )
    return DemoData(customers, products, subs, blocks)


def generate(workload: str, entities: int, seed: int = 11) -> DemoData:
    if workload == "demo":
        return demo_data.generate(entities, seed=seed)
    if workload == "fresh":
        return fresh(entities, seed=seed)
    raise ValueError(f"unknown workload {workload!r} (known: {', '.join(WORKLOADS)})")
