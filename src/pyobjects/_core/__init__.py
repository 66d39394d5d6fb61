"""The actor core (private): runtime, catalog, event pipeline, gates, alarms.

Everything that makes objects live lives here, and only here do modules
know about each other's internals. Modules outside the package are either
value types the core builds on (ids, errors, HTTP and WebSocket values, the
codec, storage), which import nothing of the core, or layers above it (the
ASGI edge, the CLI, ``pyobjects.testing``), which use what the public
modules re-export. ``tests/test_layering.py`` checks both.
"""
