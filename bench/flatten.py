"""Benchmark: flatten 10,000 entities of ~30 fields each; print records per second.

Instances are built and validated before timing: only `flatten` is measured (best of
three passes, so one-off warm-up such as plan compilation is not what is reported).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from uuid import UUID

from pydantic import BaseModel

from idxr_pg.records.traverse import flatten


class Status(Enum):
    ACTIVE = "active"
    PAUSED = "paused"


class Address(BaseModel):
    street: str
    city: str
    postcode: str
    country: str


class Customer(BaseModel):
    customer_id: UUID
    name: str
    email: str
    since: date
    vip: bool
    address: Address


class Line(BaseModel):
    sku: str
    description: str
    quantity: int
    price: Decimal


class Order(BaseModel):
    order_id: UUID
    status: Status
    created_at: datetime
    note: str | None
    total: Decimal
    weight_kg: float
    customer: Customer
    lines: list[Line]
    tags: set[str]
    attributes: dict[str, str]


def make_order(i: int) -> Order:
    return Order(
        order_id=UUID(int=i),
        status=Status.ACTIVE if i % 3 else Status.PAUSED,
        created_at=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=i),
        note=f"Leave parcel {i} with the neighbour" if i % 2 else None,
        total=Decimal(i) / 100,
        weight_kg=i / 7,
        customer=Customer(
            customer_id=UUID(int=10**9 + i),
            name=f"Customer {i}",
            email=f"customer{i}@example.com",
            since=date(2020, 1, 1) + timedelta(days=i % 1000),
            vip=i % 5 == 0,
            address=Address(
                street=f"{i} Main Street",
                city="Springfield",
                postcode=f"{i % 99999:05d}",
                country="NL",
            ),
        ),
        lines=[
            Line(
                sku=f"SKU-{i}-{n}",
                description=f"Blue widget size {n}",
                quantity=n + 1,
                price=Decimal("9.99"),
            )
            for n in range(3)
        ],
        tags={"priority", f"batch-{i % 10}"},
        attributes={"channel": "web", "gift-wrap": "no"},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    orders = [make_order(i) for i in range(args.entities)]
    best = float("inf")
    n_records = 0
    for _ in range(args.repeat):
        start = time.perf_counter()
        n_records = sum(len(flatten(order, "order")) for order in orders)
        best = min(best, time.perf_counter() - start)
    print(
        f"flatten: {args.entities:,} entities, {n_records / args.entities:.1f} records each, "
        f"{n_records:,} records in {best:.3f} s -> {n_records / best:,.0f} records/s "
        f"({args.entities / best:,.0f} entities/s, best of {args.repeat})"
    )


if __name__ == "__main__":
    main()
