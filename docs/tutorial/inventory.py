"""The tutorial's service: how many of an item the warehouse holds."""

from __future__ import annotations

import os
from dataclasses import dataclass

from msrpc.codec import register
from msrpc.service import expose


@register(name="tutorial.Stock")  # the name travels on the wire: keep it stable
@dataclass
class Stock:
    sku: str
    count: int
    served_by: str  # which process answered, to watch the load balancing


STOCK = {"apple": 12, "pear": 3}


class Inventory:
    @expose(idempotent=True)  # a read: safe to retry on another instance
    def stock(self, sku: str) -> Stock:
        return Stock(sku, STOCK[sku], served_by=f"pid {os.getpid()}")
