"""Pydantic models of the demo application: network service subscriptions.

A subscription belongs to a customer, is an instance of a product, and is made of product
blocks (ports, circuits, ...) stored in a child table.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    PROVISIONING = "provisioning"
    TERMINATED = "terminated"


class Customer(BaseModel):
    customer_id: str
    name: str
    segment: str


class Product(BaseModel):
    product_id: UUID
    name: str
    description: str
    product_type: str


class ProductBlock(BaseModel):
    name: str
    description: str
    speed_mbps: int
    location: str


class Subscription(BaseModel):
    subscription_id: UUID
    description: str
    status: SubscriptionStatus
    start_date: date
    insync: bool
    customer: Customer
    product: Product
    blocks: list[ProductBlock] = []
