"""Test helpers for pyobjects: virtual time, reaching inside objects, conformance.

Not imported by ``import pyobjects``; import it from tests. Mirrors
``cloudflare:test`` (``runInDurableObject``, ``listDurableObjectIds``,
``SELF.fetch``, ...).
"""

from ._clients import MakeClient as MakeClient, MakeServer as MakeServer
from ._clock import ManualClock as ManualClock
from ._conformance import check_storage_backend as check_storage_backend
from ._harness import (
    MakeRuntime as MakeRuntime,
    crash_and_restart as crash_and_restart,
    evict as evict,
    fail_next_commits as fail_next_commits,
    list_durable_object_ids as list_durable_object_ids,
    run_durable_object_alarm as run_durable_object_alarm,
    run_in_durable_object as run_in_durable_object,
)

__all__ = (
    "MakeClient",
    "MakeRuntime",
    "MakeServer",
    "ManualClock",
    "check_storage_backend",
    "crash_and_restart",
    "evict",
    "fail_next_commits",
    "list_durable_object_ids",
    "run_durable_object_alarm",
    "run_in_durable_object",
)

for _name in __all__:
    if _name != "MakeRuntime":  # a type alias has no __module__ of its own
        globals()[_name].__module__ = __name__
del _name
