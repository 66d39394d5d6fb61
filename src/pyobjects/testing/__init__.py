"""Test helpers for pyobjects: virtual time, reaching inside objects, conformance.

Not imported by ``import pyobjects``; import it from tests. Mirrors
``cloudflare:test`` (``runInDurableObject``, ``listDurableObjectIds``, ...).
"""

from ._clock import ManualClock as ManualClock
from ._conformance import check_storage_backend as check_storage_backend
from ._harness import (
    evict as evict,
    list_durable_object_ids as list_durable_object_ids,
    run_in_durable_object as run_in_durable_object,
)

__all__ = (
    "ManualClock",
    "check_storage_backend",
    "evict",
    "list_durable_object_ids",
    "run_in_durable_object",
)

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
