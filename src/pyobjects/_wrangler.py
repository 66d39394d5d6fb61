"""Read a wrangler configuration into a :class:`~pyobjects.Worker`.

``pyobjects serve --config wrangler.toml`` (or ``wrangler.jsonc``/``.json``)
serves a Python Workers project as ``wrangler dev`` would: it imports
``main``, binds ``durable_objects.bindings`` to the classes ``main`` defines,
passes ``vars`` (overridden by ``.dev.vars`` beside the config) and names the
worker ``name``, so ids are the ones wrangler makes.

Only what pyobjects can honour is read; the rest of the file (routes,
compatibility flags, other binding types) is ignored, and a field that would
change behaviour pyobjects cannot reproduce (a Durable Object bound from
another worker's ``script_name``) is refused.
"""

from __future__ import annotations

import importlib
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

from ._core._namespace import DurableObjectBinding
from ._core._object import DurableObject
from ._worker import Worker, WorkerEntrypoint

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import ModuleType

__all__ = [
    "CONFIG_NAMES",
    "WranglerConfig",
    "find_config",
    "import_main",
    "main_folder",
    "read_config",
]

#: The names wrangler looks for, in its order of preference.
CONFIG_NAMES = ("wrangler.json", "wrangler.jsonc", "wrangler.toml")


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class WranglerConfig:
    """What pyobjects uses of a wrangler configuration file."""

    path: Path
    name: str | None = None
    main: Path | None = None
    #: ``(binding name, class name)`` pairs, in file order.
    bindings: tuple[tuple[str, str], ...] = ()
    vars: Mapping[str, Any] = field(default_factory=dict)

    def load_worker(self) -> Worker:
        """Import ``main`` and build the :class:`Worker` the file describes.

        The entry point is ``main``'s ``Default`` class (a
        :class:`WorkerEntrypoint`, as in Python Workers), else its
        ``on_fetch(request, env)`` or ``fetch`` function.

        Raises:
            ValueError: If ``main`` is missing or lacks an entry point or a
                bound class.
        """
        return self.worker_from(import_main(self.main_path()))

    def main_path(self) -> Path:
        """Return ``main`` as an existing file.

        Raises:
            ValueError: If the config has no ``main`` or it does not exist.
        """
        if self.main is None:
            raise ValueError(f"{self.path}: no `main` (the worker's entry module)")
        if not self.main.is_file():
            raise ValueError(
                f"{self.path}: `main` is {self.main}, which does not exist"
            )
        return self.main

    def worker_from(self, module: ModuleType) -> Worker:
        """Build the :class:`Worker` from ``main``, already imported as *module*."""
        main = self.main_path()
        entry = _entry_point(module, main)
        bindings: dict[str, type[DurableObject] | DurableObjectBinding] = {}
        for binding, class_name in self.bindings:
            cls = getattr(module, class_name, None)
            if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
                raise ValueError(
                    f"{self.path}: durable_objects binding {binding!r} names "
                    f"class_name {class_name!r}, but {main.name} defines no "
                    "DurableObject subclass of that name"
                )
            if self.name is None:
                bindings[binding] = cls
            else:
                bindings[binding] = DurableObjectBinding.wrangler(
                    cls, worker_name=self.name, class_name=class_name
                )
        return Worker(entry, bindings=bindings, vars=self.vars)


def find_config(directory: str | Path) -> Path | None:
    """Return the wrangler config in *directory* wrangler would pick, if any."""
    for name in CONFIG_NAMES:
        candidate = Path(directory) / name
        if candidate.is_file():
            return candidate
    return None


def read_config(
    path: str | Path, *, extra_vars: Mapping[str, str] | None = None
) -> WranglerConfig:
    """Parse a ``wrangler.toml``, ``wrangler.jsonc`` or ``wrangler.json``.

    ``vars`` come from the file, then ``.dev.vars`` beside it (as in
    ``wrangler dev``), then *extra_vars* (``--var KEY=VALUE``).

    Raises:
        ValueError: If the file does not parse or a field has the wrong shape;
            the message names the file and the field.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = json.loads(strip_jsonc(text))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table/object at the top level")
    name = _optional_str(data, "name", path)
    main_field = _optional_str(data, "main", path)
    main = None if main_field is None else (path.parent / main_field).resolve()
    variables = data.get("vars", {})
    if not isinstance(variables, dict):
        raise ValueError(f"{path}: `vars` must be a table/object")
    merged: dict[str, Any] = dict(variables)
    dev_vars = path.parent / ".dev.vars"
    if dev_vars.is_file():
        merged.update(parse_dotenv(dev_vars.read_text(encoding="utf-8")))
    merged.update(extra_vars or {})
    return WranglerConfig(
        path=path,
        name=name,
        main=main,
        bindings=_bindings(data, path),
        vars=merged,
    )


def _optional_str(data: dict[str, Any], key: str, path: Path) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{path}: `{key}` must be a string, not {value!r}")
    return value


def _bindings(data: dict[str, Any], path: Path) -> tuple[tuple[str, str], ...]:
    section = data.get("durable_objects", {})
    if not isinstance(section, dict):
        raise ValueError(f"{path}: `durable_objects` must be a table/object")
    entries = section.get("bindings", [])
    if not isinstance(entries, list):
        raise ValueError(f"{path}: `durable_objects.bindings` must be a list")
    out: list[tuple[str, str]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(
                f"{path}: each durable_objects binding must be a table/object "
                f"with `name` and `class_name`, got {entry!r}"
            )
        name, class_name = entry.get("name"), entry.get("class_name")
        if not isinstance(name, str) or not isinstance(class_name, str):
            raise ValueError(
                f"{path}: a durable_objects binding needs string `name` and "
                f"`class_name`, got {entry!r}"
            )
        if entry.get("script_name") is not None:
            raise ValueError(
                f"{path}: durable_objects binding {name!r} uses script_name "
                f"{entry['script_name']!r} (a class of another worker), which "
                "pyobjects does not serve: bind classes of this worker only"
            )
        out.append((name, class_name))
    return tuple(out)


def main_folder(main: Path) -> str:
    """Put *main*'s folder on ``sys.path`` and return it.

    Python Workers import the modules beside ``main`` by plain name (``from
    hello import hello`` in ``src/entry.py`` finds ``src/hello.py``).
    """
    folder = str(main.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return folder


def import_main(main: Path) -> ModuleType:
    """Import *main* as a top-level module, with its folder on ``sys.path``."""
    main_folder(main)
    return importlib.import_module(main.stem)


def _entry_point(module: ModuleType, main: Path) -> Any:
    default = getattr(module, "Default", None)
    if isinstance(default, type) and issubclass(default, WorkerEntrypoint):
        return default
    for name in ("on_fetch", "fetch"):
        fn = getattr(module, name, None)
        if callable(fn) and not isinstance(fn, type):
            return fn
    raise ValueError(
        f"{main.name} has no entry point: define `class Default(WorkerEntrypoint)` "
        "with an async fetch(self, request), or `async def on_fetch(request, env)`"
    )


def parse_dotenv(text: str) -> dict[str, str]:
    """Parse ``.dev.vars``: ``KEY=VALUE`` lines, ``#`` comments, optional quotes."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def strip_jsonc(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments and trailing commas (JSON with comments)."""
    return _scan(_scan(text, comments=True), comments=False)


def _scan(text: str, *, comments: bool) -> str:
    """Drop comments (or, with ``comments=False``, trailing commas) outside strings."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif comments and text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif comments and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif not comments and c == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j >= n or text[j] not in "]}":
                out.append(c)
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)
