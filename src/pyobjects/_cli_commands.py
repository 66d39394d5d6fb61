"""The click commands behind ``pyobjects`` (needs the ``server`` extra)."""

from __future__ import annotations

import gc
import importlib
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import click

from ._asgi import App
from ._cli_reload import run_with_reload
from ._errors import StorageError, StorageInUseError
from ._inspect import (
    AmbiguousObjectError,
    ObjectSummary,
    dump_object,
    find_object,
    format_alarm,
    jsonable,
    prepare,
    run_query,
    sql_tables,
    summarize,
    summary_json,
)
from ._logs import serve_log_config
from ._node import Node
from ._prometheus import PrometheusCollector
from ._worker import Worker
from ._wrangler import CONFIG_NAMES, find_config, main_folder, read_config
from .storage.memory import MemoryBackend
from .storage.postgres import PostgresBackend, read_only_postgres
from .storage.sqlite import SQLiteBackend, read_only_backend

if TYPE_CHECKING:
    from types import ModuleType

    from .storage._base import StorageBackend

__all__ = ["cli"]

DEFAULT_STORAGE = ".pyobjects"
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pyobjects")
def cli() -> None:
    """Serve and inspect pyobjects Durable Objects."""


#: What to do about a module that only exists on Cloudflare (Python Workers).
_PORTING_HINTS = {
    "js": (
        "'js' is Pyodide's bridge to JavaScript, which exists only on Cloudflare: "
        "import Response, WebSocketPair and the rest from pyobjects instead"
    ),
    "pyodide": (
        "'pyodide' exists only on Cloudflare: to_js, to_py and create_proxy "
        "are not needed with pyobjects (pass the Python values as they are)"
    ),
    "workers": (
        "'workers' is Cloudflare's Python Workers module: import the same "
        "names from pyobjects instead"
    ),
}


def _import(module_name: str, path: str) -> ModuleType:
    """Import *module_name*, turning every failure into a usage error.

    A module that is not there is named as such; a module that is there but
    fails while importing (a missing dependency, a syntax error, an exception
    at module level) gets its own traceback on stderr, importlib's frames
    left out, and the error in the message.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name
        if missing is not None and (
            module_name == missing or module_name.startswith(missing + ".")
        ):
            raise click.BadParameter(
                f"cannot import module {module_name!r} (from {path}): "
                f"there is no module {missing!r}",
                param_hint="MODULE:WORKER",
            ) from None
        hint = _PORTING_HINTS.get((missing or "").partition(".")[0])
        _print_import_traceback(exc)
        raise click.BadParameter(
            f"module {module_name!r} failed while importing: {exc}"
            + (f" ({hint})" if hint else ""),
            param_hint="MODULE:WORKER",
        ) from None
    except Exception as exc:
        _print_import_traceback(exc)
        raise click.BadParameter(
            f"module {module_name!r} failed while importing: "
            f"{type(exc).__name__}: {exc} (traceback above)",
            param_hint="MODULE:WORKER",
        ) from None


def _print_import_traceback(exc: BaseException) -> None:
    report = traceback.TracebackException.from_exception(exc)
    report.stack = traceback.StackSummary.from_list(
        [
            frame
            for frame in report.stack
            if not frame.filename.startswith("<frozen importlib")
            and frame.filename not in (__file__, importlib.__file__)
        ]
    )
    click.echo("".join(report.format()), err=True, nl=False)


def _parse_vars(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(
                f"expected KEY=VALUE, got {pair!r}", param_hint="--var"
            )
        out[key] = value
    return out


def with_vars(worker: Worker, overrides: dict[str, str]) -> Worker:
    """Return *worker* with *overrides* (``--var``) on top of its vars."""
    if not overrides:
        return worker
    return Worker(
        worker.fetch,
        bindings=worker.bindings,
        vars={**worker.vars, **overrides},
        name=worker.name,
    )


def _load_config_worker(
    config_path: str | None, app_dir: str, overrides: dict[str, str]
) -> tuple[Worker, str]:
    """Build the Worker a wrangler config describes (``serve`` without a target)."""
    path = Path(config_path) if config_path is not None else find_config(app_dir)
    if path is None:
        raise click.UsageError(
            "give MODULE:WORKER, or --config with a wrangler config "
            f"({', '.join(CONFIG_NAMES)}: none in {os.path.abspath(app_dir)})"
        )
    try:
        config = read_config(path, extra_vars=overrides)
        main = config.main_path()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from None
    module = _import(main.stem, main_folder(main))
    try:
        return config.worker_from(module), str(path)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--config") from None


def load_worker(target: str, app_dir: str) -> Worker:
    """Import ``module:attribute`` (relative to *app_dir*) and check it is a Worker."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(
            f"expected MODULE:WORKER (for example app:worker), got {target!r}",
            param_hint="MODULE:WORKER",
        )
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    module = _import(module_name, path)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.BadParameter(
                f"module {module_name!r} has no attribute {attr!r}",
                param_hint="MODULE:WORKER",
            ) from None
    if isinstance(obj, App):
        raise click.BadParameter(
            f"{target} is a pyobjects.asgi.App; name its pyobjects.Worker "
            "(pyobjects serve builds the App), or run the App with uvicorn",
            param_hint="MODULE:WORKER",
        )
    if not isinstance(obj, Worker):
        raise click.BadParameter(
            f"{target} is a {type(obj).__name__}, not a pyobjects.Worker",
            param_hint="MODULE:WORKER",
        )
    return obj


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off only on the
    # connections of a socket that says it is TCP (else a response written in
    # two parts waits for the client's delayed ACK, about 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listen now, so that a client reading the printed URL can connect at
        # once; uvicorn accepts the queued connections when it has started.
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
    sock.set_inheritable(True)
    return sock


def _check_not_in_use(directory: str) -> None:
    """Refuse, with a clear message, a directory another runtime serves.

    Only a courtesy check before uvicorn starts: the runtime claims the
    directory itself when the lifespan starts it (and fails the startup if
    another process took it in between).
    """
    probe = SQLiteBackend(directory)
    try:
        probe.claim()
    except StorageInUseError as exc:
        raise click.ClickException(f"cannot serve: {exc}") from None
    finally:
        anyio.run(probe.aclose)


def _serve_metrics(app: App, host: str, port: int) -> tuple[Any, int]:
    """Start the Prometheus endpoint (a thread); return its server and port."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ModuleNotFoundError:
        raise click.ClickException(
            "--metrics-port needs prometheus-client: pip install 'pyobjects[metrics]'"
        ) from None
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(lambda: app.runtime.statistics()))
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve metrics on {host}:{port}: {exc.strerror}"
        ) from None
    return server, server.server_address[1]


class _Stopped(Exception):
    """SIGTERM, seen after uvicorn's graceful shutdown."""


def _postgres_backend(
    dsn: str, schema: str, *, read_only: bool = False, lease_ttl: float = 10.0
) -> Any:
    """A PostgresBackend (a read-only one for inspect), or a clear usage error."""
    try:
        import asyncpg  # noqa: F401 - optional: the postgres extra
    except ModuleNotFoundError:
        raise click.ClickException(
            "--postgres needs asyncpg: pip install 'pyobjects[postgres]'"
        ) from None
    try:
        if read_only:
            return read_only_postgres(dsn, schema=schema)
        return PostgresBackend(dsn, schema=schema, lease_ttl=lease_ttl)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--schema") from None


def _stop_on_sigterm(signum: int, frame: object) -> NoReturn:
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again
    # for the previous handler: this one, which makes that a normal exit.
    raise _Stopped


@cli.command()
@click.argument("target", metavar="[MODULE:WORKER]", required=False)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="A wrangler.toml/.jsonc/.json to serve (found in --app-dir by default).",
)
@click.option(
    "--reload",
    is_flag=True,
    help="Restart when a .py file, the wrangler config or .dev.vars changes.",
)
@click.option(
    "--var",
    "extra_vars",
    multiple=True,
    metavar="KEY=VALUE",
    help="Add or override a var (repeatable).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface.")
@click.option(
    "--port",
    default=8787,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port; 0 picks a free one.",
)
@click.option(
    "--storage",
    type=click.Path(file_okay=False),
    default=None,
    help=f"Directory of the SQLite storage.  [default: ./{DEFAULT_STORAGE}]",
)
@click.option("--memory", is_flag=True, help="Keep storage in memory (lost on exit).")
@click.option(
    "--postgres",
    "postgres_dsn",
    metavar="DSN",
    default=None,
    help="Keep storage in PostgreSQL (postgresql://host/db; the postgres extra).",
)
@click.option(
    "--schema",
    default="pyobjects",
    show_default=True,
    help="The PostgreSQL schema of --postgres.",
)
@click.option(
    "--node-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="With --postgres: where other nodes reach this one.  [default: --port + 1000]",
)
@click.option(
    "--node-host",
    default=None,
    help="With --postgres: the interface of --node-port.  [default: --host]",
)
@click.option(
    "--lease-ttl",
    type=click.FloatRange(0.5, 86400),
    default=10.0,
    show_default=True,
    help="With --postgres: seconds an object's lease lasts without renewal.",
)
@click.option(
    "--debug", is_flag=True, help="Show tracebacks in 500 responses (never in prod)."
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS),
    default="info",
    show_default=True,
    help="Log level of uvicorn and pyobjects (debug shows objects' lifecycle).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text (time, level, logger, message) or JSON objects.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Also serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port).",
)
@click.option(
    "--app-dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False, exists=True),
    help="Directory MODULE is imported from.",
)
def serve(
    target: str | None,
    config_path: str | None,
    reload: bool,
    extra_vars: tuple[str, ...],
    host: str,
    port: int,
    storage: str | None,
    memory: bool,
    postgres_dsn: str | None,
    schema: str,
    node_port: int | None,
    node_host: str | None,
    lease_ttl: float,
    debug: bool,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
    app_dir: str,
) -> None:
    """Serve MODULE:WORKER (a pyobjects.Worker) over HTTP and WebSockets.

    Without MODULE:WORKER, serve the wrangler config given with --config, or
    the wrangler.json, wrangler.jsonc or wrangler.toml in --app-dir: its
    main, durable_objects bindings, vars (and .dev.vars) and name.

    Runs uvicorn. Ctrl-C (or SIGTERM) stops accepting connections, lets
    running requests finish, flushes every pending write and exits with 0.
    """
    if sum((storage is not None, memory, postgres_dsn is not None)) > 1:
        raise click.UsageError("give at most one of --storage, --memory, --postgres")
    try:
        import uvicorn  # optional: the server extra
    except ModuleNotFoundError:
        raise click.ClickException(
            "pyobjects serve needs uvicorn: pip install 'pyobjects[server]'"
        ) from None
    overrides = _parse_vars(extra_vars)
    if reload:
        args = [a for a in sys.argv[1:] if a != "--reload"]
        run_with_reload(
            args[args.index("serve") + 1 :] if "serve" in args else args,
            watch=str(Path(config_path).parent) if config_path else app_dir,
            ignore=[storage if storage is not None else DEFAULT_STORAGE],
        )
        return
    if target is not None:
        if config_path is not None:
            raise click.UsageError("give MODULE:WORKER or --config, not both")
        worker = with_vars(load_worker(target, app_dir), overrides)
        label = target
    else:
        worker, label = _load_config_worker(config_path, app_dir, overrides)
    backend: StorageBackend
    node: Node | None = None
    if memory:
        backend, where = MemoryBackend(), "in memory"
    elif postgres_dsn is not None:
        backend = _postgres_backend(postgres_dsn, schema, lease_ttl=lease_ttl)
        where = f"PostgreSQL, schema {schema}"
        if node_port is None:
            node_port = port + 1000 if port else 0
        node = Node(host=node_host or host, port=node_port)
    else:
        directory = storage if storage is not None else DEFAULT_STORAGE
        _check_not_in_use(directory)
        backend, where = SQLiteBackend(directory), f"SQLite in {directory}"
    if node is None and (node_port is not None or node_host is not None):
        raise click.UsageError("--node-port and --node-host need --postgres")
    app = App(worker, storage=backend, debug=debug, node=node)
    metrics = None if metrics_port is None else _serve_metrics(app, host, metrics_port)
    sock = _bind(host, port)
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level=log_level,
        log_config=serve_log_config(log_level, json_lines=log_format == "json"),
        ws_max_size=app.max_message_size,
        server_header=False,
    )
    server = uvicorn.Server(config)
    bound = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    click.echo(
        f"pyobjects: serving {label} at http://{url_host}:{bound} "
        f"(storage: {where}); press Ctrl-C to stop"
    )
    if metrics is not None:
        click.echo(f"pyobjects: metrics at http://{url_host}:{metrics[1]}/metrics")
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # What is loaded by now (modules, the app) lives as long as the process:
    # freezing it keeps it out of every later full collection, whose pause
    # grows with the number of objects it walks (#16).
    gc.collect()
    gc.freeze()
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass  # uvicorn re-raises the signal it handled gracefully
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        if metrics is not None:
            metrics[0].shutdown()
    if not server.started:
        raise click.ClickException("the server did not start (see the log above)")
    click.echo("pyobjects: stopped; pending writes flushed")


# -- inspect --------------------------------------------------------------------


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    ]


def _print_summaries(summaries: list[ObjectSummary], namespaces: list[str]) -> None:
    for namespace in namespaces:
        objects = [s for s in summaries if s.namespace == namespace]
        noun = "object" if len(objects) == 1 else "objects"
        click.echo(f"{namespace}: {len(objects)} {noun}")
        if not objects:
            continue
        rows = [["  ID", "NAME", "KEYS", "BYTES", "ALARM (UTC)"]]
        rows += [
            [
                "  " + s.object_id,
                "-" if s.name is None else repr(s.name),
                str(s.keys),
                str(s.size),
                format_alarm(s.alarm),
            ]
            for s in objects
        ]
        for line in _table(rows):
            click.echo(line)


@cli.command()
@click.option(
    "--storage",
    type=click.Path(file_okay=False),
    default=DEFAULT_STORAGE,
    show_default=True,
    help="Directory of the SQLite storage.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--sql",
    "query",
    default=None,
    help="Run this read-only statement in OBJECT's database and print the rows.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Interrupt the --sql statement after this long.  [default: no limit]",
)
@click.option(
    "--web",
    is_flag=True,
    help="Serve the inspector in the browser, at http://127.0.0.1 (with a token).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="The port of --web.  [default: 0, a free port]",
)
@click.option(
    "--postgres",
    "postgres_dsn",
    metavar="DSN",
    default=None,
    help="Inspect the storage in this PostgreSQL database instead of --storage.",
)
@click.option(
    "--schema",
    default="pyobjects",
    show_default=True,
    help="The PostgreSQL schema of --postgres.",
)
@click.argument("namespace", required=False)
@click.argument("object_ref", metavar="[OBJECT]", required=False)
def inspect(
    storage: str,
    as_json: bool,
    query: str | None,
    timeout: float | None,
    web: bool,
    port: int | None,
    postgres_dsn: str | None,
    schema: str,
    namespace: str | None,
    object_ref: str | None,
) -> None:
    """List stored objects, or dump one object's keys and values.

    Without arguments, list every namespace and its objects (ids, names when
    known, key counts, bytes stored and pending alarms). With NAMESPACE, list
    that namespace only. With NAMESPACE OBJECT (its name, its 64 hex digits
    or a unique prefix of at least 4 of them), print its keys and decoded
    values and its SQL tables (schema and row count); with --sql, the rows
    of one read-only statement instead.

    With --web, serve all of it as a page on 127.0.0.1 (namespaces, objects,
    KV entries, SQL tables with paging, alarms, read-only SQL): open the URL
    printed, which holds the token every request needs.

    Reads only (the databases are opened read-only and no WAL is
    checkpointed), so it is safe while a server runs on the same storage.
    """
    if web and (as_json or query is not None or namespace is not None):
        raise click.UsageError("--web takes no NAMESPACE, OBJECT, --json or --sql")
    if port is not None and not web:
        raise click.UsageError("--port needs --web")
    backend: Any
    if postgres_dsn is not None:
        backend = _postgres_backend(postgres_dsn, schema, read_only=True)
        label = f"PostgreSQL schema {schema}"
    elif not os.path.isdir(storage):
        raise click.ClickException(f"no pyobjects storage at {storage}")
    else:
        backend, label = read_only_backend(storage), storage
    if web:
        _inspect_web(backend, label, 0 if port is None else port)
        return
    if query is not None and object_ref is None:
        raise click.UsageError("--sql needs NAMESPACE and OBJECT")
    if timeout is not None and query is None:
        raise click.UsageError("--timeout needs --sql")

    async def run() -> None:
        # One event loop for the reads and the close: a PostgreSQL pool
        # belongs to the loop that opened it.
        try:
            if object_ref is not None:
                assert namespace is not None
                await _dump(backend, namespace, object_ref, as_json, query, timeout)
            else:
                await _list(backend, namespace, as_json)
        finally:
            await backend.aclose()

    try:
        anyio.run(run)
    except ValueError as exc:  # a malformed namespace name
        raise click.ClickException(str(exc)) from None
    except StorageError as exc:  # the database is unreachable, say
        raise click.ClickException(str(exc)) from None


def _inspect_web(backend: Any, storage: str, port: int) -> None:
    try:
        import uvicorn  # optional: the server extra

        from ._inspect_web import inspector_app, new_token  # needs starlette
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"pyobjects inspect --web needs {(exc.name or '?').partition('.')[0]}: "
            "pip install 'pyobjects[server]'"
        ) from None
    token = new_token()
    app = inspector_app(backend, token=token, storage_label=storage)
    # Loopback only, whatever the machine: the storage is nobody else's.
    sock = _bind("127.0.0.1", port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,  # page URLs hold the token
            server_header=False,
        )
    )
    bound = sock.getsockname()[1]
    click.echo(f"pyobjects: inspecting {storage} (read-only); press Ctrl-C to stop")
    click.echo(f"pyobjects: open http://127.0.0.1:{bound}/?token={token}")
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # What is loaded by now (modules, the app) lives as long as the process:
    # freezing it keeps it out of every later full collection, whose pause
    # grows with the number of objects it walks (#16).
    gc.collect()
    gc.freeze()
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass  # uvicorn re-raises the signal it handled gracefully
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        anyio.run(backend.aclose)


async def _list(backend: Any, namespace: str | None, as_json: bool) -> None:
    namespaces = await backend.list_namespaces() if namespace is None else [namespace]
    summaries = await summarize(backend, namespaces)
    if as_json:
        click.echo(json.dumps([summary_json(s) for s in summaries], indent=2))
    elif not namespaces:
        click.echo("no stored objects")
    else:
        _print_summaries(summaries, namespaces)


async def _dump(
    backend: Any,
    namespace: str,
    ref: str,
    as_json: bool,
    query: str | None = None,
    query_timeout: float | None = None,
) -> None:
    try:
        object_id = await find_object(backend, namespace, ref)
    except AmbiguousObjectError as exc:
        raise click.ClickException(str(exc)) from None
    if object_id is None:
        raise click.ClickException(
            f"no stored object {ref!r} in namespace {namespace!r} "
            "(give its name, its 64 hex digits or a unique prefix of them)"
        )
    await prepare(backend, namespace, object_id)
    if query is not None:
        columns, rows = run_query(
            backend, namespace, object_id, query, timeout=query_timeout
        )
        if as_json:
            records = [dict(zip(columns, map(jsonable, r), strict=True)) for r in rows]
            click.echo(json.dumps(records, indent=2))
        elif columns:
            cells = [[str(c) for c in columns]] + [[repr(v) for v in r] for r in rows]
            for line in _table(cells):
                click.echo(line)
        return
    summary, items = await dump_object(backend, namespace, object_id)
    tables = sql_tables(backend, namespace, object_id)
    if as_json:
        document = summary_json(summary)
        document["data"] = [{"key": k, "value": jsonable(v)} for k, v in items]
        document["tables"] = [
            {"name": t.name, "sql": t.sql, "rows": t.rows} for t in tables
        ]
        click.echo(json.dumps(document, indent=2))
        return
    name = "" if summary.name is None else f" (name {summary.name!r})"
    click.echo(f"{namespace} {object_id}{name}")
    click.echo(
        f"keys: {summary.keys}, bytes: {summary.size}, "
        f"alarm: {format_alarm(summary.alarm)}"
    )
    for key, value in items:
        click.echo(f"  {key!r}: {value!r}")
    if tables:
        click.echo(f"SQL tables: {len(tables)}")
        for table in tables:
            noun = "row" if table.rows == 1 else "rows"
            click.echo(f"  {table.name}: {table.rows} {noun}")
            click.echo(f"    {table.sql}")
