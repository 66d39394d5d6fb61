"""Reading a wrangler config: ``pyobjects serve --config`` and its parser."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from pyobjects import (
    DurableObjectBinding,
    Request,
    Response,
    Worker,
    WorkerEntrypoint,
)
from pyobjects._cli_commands import cli, with_vars
from pyobjects._cli_reload import watched
from pyobjects._wrangler import find_config, parse_dotenv, read_config, strip_jsonc

from .test_porting import WORKERD_IDS

ROOT = Path(__file__).parent.parent

# A Python Workers project as a porter has it, `from workers import` become
# `from pyobjects import`: the entry module defines the classes it binds.
ENTRY = """\
from pyobjects import DurableObject, Response, WorkerEntrypoint
from helpers import greeting  # a module beside main, imported by plain name


class {cls}(DurableObject):
    async def fetch(self, request):
        count = (await self.ctx.storage.get("count") or 0) + 1
        await self.ctx.storage.put("count", count)
        return Response.json({{"count": count, "id": str(self.ctx.id)}})


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        if request.path == "/vars":
            return Response.json(
                {{"greeting": greeting(self.env.GREETING), "secret": self.env.SECRET}}
            )
        return await self.env.COUNTER.getByName("global").fetch(request)
"""

TOML = """\
name = "chat-worker"
main = "src/entry.py"
compatibility_flags = ["python_workers"]

[vars]
GREETING = "hello"
SECRET = "from the config"

[[durable_objects.bindings]]
name = "COUNTER"
class_name = "Counter"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["Counter"]
"""

JSONC = """\
// wrangler.jsonc, with comments and trailing commas
{
  "name": "chat-worker",
  "main": "src/entry.py", /* the entry module */
  "vars": {"GREETING": "hello", "SECRET": "from the config",},
  "durable_objects": {
    "bindings": [{"name": "COUNTER", "class_name": "Counter"},],
  },
}
"""


def make_project(
    root: Path, config_name: str, config: str, *, module: str, cls: str = "Counter"
) -> Path:
    """Write a project; *module* names its entry module (fresh per test)."""
    (root / "src").mkdir(parents=True)
    (root / "src" / f"{module}.py").write_text(ENTRY.format(cls=cls))
    (root / "src" / "helpers.py").write_text(
        "def greeting(word):\n    return word + ', world'\n"
    )
    config = config.replace("src/entry.py", f"src/{module}.py")
    path = root / config_name
    path.write_text(config)
    return path


@pytest.mark.parametrize("config_name", ["wrangler.toml", "wrangler.jsonc"])
def test_read_config_toml_and_jsonc(tmp_path: Path, config_name: str) -> None:
    text = TOML if config_name.endswith(".toml") else JSONC
    path = make_project(tmp_path, config_name, text, module="entry_read")
    config = read_config(path)
    assert config.name == "chat-worker"
    assert config.main == (tmp_path / "src" / "entry_read.py").resolve()
    assert config.bindings == (("COUNTER", "Counter"),)
    assert config.vars == {"GREETING": "hello", "SECRET": "from the config"}
    assert find_config(tmp_path) == path


def test_dev_vars_and_extra_vars_override_the_config(tmp_path: Path) -> None:
    path = make_project(tmp_path, "wrangler.toml", TOML, module="entry_vars")
    (tmp_path / ".dev.vars").write_text(
        '# local secrets\nSECRET="from .dev.vars"\nexport TOKEN=abc\nnot a pair\n'
    )
    config = read_config(path, extra_vars={"GREETING": "hi"})
    assert config.vars == {
        "GREETING": "hi",
        "SECRET": "from .dev.vars",
        "TOKEN": "abc",
    }


def test_load_worker_binds_the_classes_of_main_with_wrangler_keys(
    tmp_path: Path,
) -> None:
    path = make_project(tmp_path, "wrangler.toml", TOML, module="entry_load")
    worker = read_config(path).load_worker()
    binding = worker.bindings["COUNTER"]
    assert isinstance(binding, DurableObjectBinding)
    assert binding.unique_key == "chat-worker-Counter"
    assert binding.object_class.__name__ == "Counter"
    assert isinstance(worker.fetch, type)
    assert issubclass(worker.fetch, WorkerEntrypoint)
    assert worker.vars["GREETING"] == "hello"


def test_an_unnamed_config_keys_by_binding_name_and_on_fetch_works(
    tmp_path: Path,
) -> None:
    (tmp_path / "w.py").write_text(
        "from pyobjects import DurableObject, Response\n"
        "class Counter(DurableObject):\n    pass\n"
        "async def on_fetch(request, env):\n    return Response('ok')\n"
    )
    (tmp_path / "wrangler.json").write_text(
        json.dumps(
            {
                "main": "w.py",
                "durable_objects": {
                    "bindings": [{"name": "C", "class_name": "Counter"}]
                },
            }
        )
    )
    worker = read_config(tmp_path / "wrangler.json").load_worker()
    assert worker.bindings["C"].__name__ == "Counter"  # type: ignore[union-attr]
    assert getattr(worker.fetch, "__name__", None) == "on_fetch"


@pytest.mark.parametrize(
    ("config", "files", "message"),
    [
        ("name = 1\n", {}, "`name` must be a string"),
        ("vars = 1\n", {}, "`vars` must be a table"),
        ("durable_objects = 1\n", {}, "`durable_objects` must be a table"),
        ("durable_objects = {bindings = 1}\n", {}, "must be a list"),
        ("durable_objects = {bindings = [1]}\n", {}, "must be a table/object"),
        (
            "durable_objects = {bindings = [{name = 'A'}]}\n",
            {},
            "needs string `name` and `class_name`",
        ),
        (
            "[[durable_objects.bindings]]\nname = 'A'\nclass_name = 'B'\n"
            "script_name = 'other'\n",
            {},
            "uses script_name 'other'",
        ),
        ("name = [\n", {}, "wrangler.toml:"),
    ],
)
def test_bad_configs(
    tmp_path: Path, config: str, files: dict[str, str], message: str
) -> None:
    (tmp_path / "wrangler.toml").write_text(config)
    with pytest.raises(ValueError, match=message):
        read_config(tmp_path / "wrangler.toml")


def test_a_top_level_that_is_not_an_object(tmp_path: Path) -> None:
    (tmp_path / "wrangler.json").write_text("[1]")
    with pytest.raises(ValueError, match="top level"):
        read_config(tmp_path / "wrangler.json")


@pytest.mark.parametrize(
    ("main", "source", "message"),
    [
        (None, None, "no `main`"),
        ("gone.py", None, "does not exist"),
        ("noentry_a.py", "x = 1\n", "has no entry point"),
        (
            "noclass_a.py",
            "async def on_fetch(request, env): ...\n",
            "defines no DurableObject subclass",
        ),
    ],
)
def test_serve_config_errors(
    tmp_path: Path, main: str | None, source: str | None, message: str
) -> None:
    lines = [] if main is None else [f'main = "{main}"']
    lines += ["[[durable_objects.bindings]]", 'name = "C"', 'class_name = "Counter"']
    (tmp_path / "wrangler.toml").write_text("\n".join(lines) + "\n")
    if main is not None and source is not None:
        (tmp_path / main).write_text(source)
    result = CliRunner().invoke(cli, ["serve", "--app-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_serve_usage_errors_around_configs(tmp_path: Path) -> None:
    runner = CliRunner()
    nothing = runner.invoke(cli, ["serve", "--app-dir", str(tmp_path)])
    assert nothing.exit_code == 2
    assert "give MODULE:WORKER, or --config" in nothing.output
    (tmp_path / "wrangler.toml").write_text("")
    both = runner.invoke(
        cli, ["serve", "x:y", "--config", str(tmp_path / "wrangler.toml")]
    )
    assert both.exit_code == 2
    assert "not both" in both.output
    bad_var = runner.invoke(cli, ["serve", "x:y", "--var", "novalue"])
    assert bad_var.exit_code == 2
    assert "expected KEY=VALUE" in bad_var.output


def test_serve_config_reports_a_failing_main(tmp_path: Path) -> None:
    (tmp_path / "boom_main.py").write_text("from js import Response\n")
    (tmp_path / "wrangler.toml").write_text('main = "boom_main.py"\n')
    result = CliRunner().invoke(cli, ["serve", "--app-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "module 'boom_main' failed while importing: No module named 'js'" in (
        result.output
    )


def test_strip_jsonc_keeps_strings() -> None:
    text = '{"a": "// no", "b": "/* no */", "c": "x\\\\",, "d": [1, /* c */ 2,]}'
    assert json.loads(strip_jsonc(text.replace(",,", ","))) == {
        "a": "// no",
        "b": "/* no */",
        "c": "x\\",
        "d": [1, 2],
    }
    assert strip_jsonc("[1, 2, // x\n]") == "[1, 2 \n]"


def test_parse_dotenv() -> None:
    assert parse_dotenv("A=1\n B = 'two words' \n#C=3\n\nD=\"\"\n") == {
        "A": "1",
        "B": "two words",
        "D": "",
    }


@pytest.mark.parametrize("config_name", ["wrangler.toml", "wrangler.jsonc"])
def test_serve_runs_a_wrangler_project_with_wrangler_ids(
    tmp_path: Path, config_name: str
) -> None:
    # A real `pyobjects serve`, started in the project folder with no target:
    # it finds the config, imports main, binds the class, passes the vars
    # (.dev.vars and --var on top) and keys the namespace as wrangler dev does.
    text = TOML if config_name.endswith(".toml") else JSONC
    module = "entry_" + config_name.replace(".", "_")
    make_project(tmp_path, config_name, text, module=module)
    (tmp_path / ".dev.vars").write_text("SECRET=from-dev-vars\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "pyobjects", "serve", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--var", "GREETING=hey"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert f"pyobjects: serving {config_name} at http://127.0.0.1:" in line, (
            line + (process.stderr.read() if process.poll() is not None else "")  # type: ignore[union-attr]
        )
        url = line.split(" at ")[1].split()[0]
        with httpx.Client(base_url=url, timeout=10) as client:
            first = client.get("/").json()
            second = client.get("/").json()
            variables = client.get("/vars").json()
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert first == {"count": 1, "id": WORKERD_IDS["Counter", "global"]}
    assert second["count"] == 2
    assert variables == {"greeting": "hey, world", "secret": "from-dev-vars"}


def test_var_overrides_a_module_workers_vars() -> None:
    class Default(WorkerEntrypoint):
        async def fetch(self, request: Request) -> Response:
            return Response("")  # pragma: no cover - never served

    worker = Worker(Default, bindings={}, vars={"A": "1", "B": "2"}, name="w")
    assert with_vars(worker, {}) is worker
    changed = with_vars(worker, {"B": "3", "C": "4"})
    assert dict(changed.vars) == {"A": "1", "B": "3", "C": "4"}
    assert (changed.fetch, changed.name) == (Default, "w")


RELOAD_MAIN = """\
from pyobjects import DurableObject, Response, WorkerEntrypoint


class Counter(DurableObject):
    async def fetch(self, request):
        count = (await self.ctx.storage.get("count") or 0) + 1
        await self.ctx.storage.put("count", count)
        return Response(f"{VERSION} {count}")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await self.env.COUNTER.getByName("c").fetch(request)


VERSION = "{version}"
"""


def test_serve_reload_restarts_on_a_change_and_keeps_the_data(tmp_path: Path) -> None:
    (tmp_path / "reload_main.py").write_text(RELOAD_MAIN.replace("{version}", "v1"))
    (tmp_path / "wrangler.toml").write_text(
        'name = "r"\nmain = "reload_main.py"\n'
        '[[durable_objects.bindings]]\nname = "COUNTER"\nclass_name = "Counter"\n'
    )
    with socket.socket() as probe:  # a free port, kept across restarts
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pyobjects", "serve", "--reload", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        assert process.stdout is not None
        assert "pyobjects: serving wrangler.toml" in process.stdout.readline()
        assert httpx.get(url, timeout=10).text == "v1 1"
        (tmp_path / "reload_main.py").write_text(RELOAD_MAIN.replace("{version}", "v2"))
        # The old server stops (flushing), the new one starts on the same port.
        assert "pending writes flushed" in process.stdout.readline()
        assert "pyobjects: serving wrangler.toml" in process.stdout.readline()
        assert httpx.get(url, timeout=10).text == "v2 2"
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "reload_main.py changed; restarting" in err
    assert ".pyobjects" not in err  # the storage's own writes restart nothing
    assert "pending writes flushed" in out


def test_what_reload_watches(tmp_path: Path) -> None:
    storage = tmp_path / ".pyobjects"
    assert watched(str(tmp_path / "app.py"), [storage])
    assert watched(str(tmp_path / "wrangler.jsonc"), [storage])
    assert watched(str(tmp_path / ".dev.vars"), [storage])
    assert not watched(str(tmp_path / "notes.txt"), [storage])
    assert not watched(str(tmp_path / "__pycache__" / "app.py"), [storage])
    assert not watched(str(storage / "COUNTER" / "x.json"), [storage])
