"""The demo Subscription with one field added (bench/reindex.py imports it as
"reindex_models:Subscription": a computed field, so the source tables need no change)."""

from pydantic import computed_field

from idxr_pg.demo.models import Subscription as BaseSubscription


class Subscription(BaseSubscription):
    @computed_field  # type: ignore[prop-decorator]
    @property
    def headline(self) -> str:
        return f"{self.customer.name}: {self.product.name} ({self.status})"
