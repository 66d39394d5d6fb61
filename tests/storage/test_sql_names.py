"""The reserved ``_cf_`` names hold however a statement is written (#11).

Names are checked with what SQLite itself reports (the authorizer's arguments,
and the schema after a RENAME, whose new name SQLite does not pass), never by
reading the SQL text: quoted identifiers holding ``--`` or ``/*``, comments
and string literals cannot hide a reserved name, nor make a legitimate one
look reserved.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyobjects
from pyobjects import DurableObject, Runtime, SqlError
from pyobjects.storage import MemoryBackend, StorageBackend
from pyobjects.testing import run_in_durable_object

AUTH = "not authorized: SQLITE_AUTH"
BACKEND_TABLES = {"_cf_KV", "_cf_METADATA"}


class Plain(DurableObject):
    pass


def _reserved(name: str) -> bool:
    return name[:4].lower() == "_cf_"


async def _inside(fn: Any, backend: StorageBackend | None = None) -> Any:
    storage = MemoryBackend() if backend is None else backend
    async with Runtime(bindings={"P": Plain}, storage=storage) as rt:

        async def body(obj: Any, ctx: pyobjects.DurableObjectState) -> Any:
            return fn(ctx.storage.sql)

        return await run_in_durable_object(rt.env.P.get_by_name("x"), body)


def _schema_names(sql: Any) -> set[str]:
    return {row[0] for row in sql.exec("SELECT name FROM sqlite_schema").raw()}


@pytest.mark.parametrize(
    "statement",
    [
        'ALTER TABLE "a--" RENAME TO _cf_x',
        'ALTER TABLE "a--" RENAME TO "_CF_x"',
        "ALTER TABLE \"a--\" RENAME TO '_cf_x'",
        'ALTER TABLE "a--" /* RENAME TO ok */ RENAME TO [_cf_x]',
        'ALTER TABLE "a--" RENAME -- comment\n TO `_Cf_x`',
        'ALTER TABLE "a/*" RENAME TO _cf_x',
        'ALTER TABLE "a/*" RENAME TO _cf_x --*/',
    ],
)
async def test_rename_to_a_reserved_name_is_refused(
    statement: str, backend: StorageBackend
) -> None:
    def body(sql: Any) -> set[str]:
        sql.exec('CREATE TABLE "a--" (v)')
        sql.exec('CREATE TABLE "a/*" (v)')
        sql.exec('INSERT INTO "a--" VALUES (1)')
        with pytest.raises(SqlError) as info:
            sql.exec(statement)
        assert str(info.value) == AUTH
        assert info.value.code == "SQLITE_AUTH"
        # Nothing of the statement was kept, and the table still works.
        assert sql.exec('SELECT v FROM "a--"').one() == {"v": 1}
        return _schema_names(sql)

    names = await _inside(body, backend)
    assert names == BACKEND_TABLES | {"a--", "a/*"}


async def test_rename_of_a_virtual_table_to_a_reserved_name_is_refused() -> None:
    def body(sql: Any) -> set[str]:
        sql.exec("CREATE VIRTUAL TABLE docs USING fts5(body)")
        with pytest.raises(SqlError, match=AUTH):
            sql.exec("ALTER TABLE docs RENAME TO _cf_docs")
        return {name for name in _schema_names(sql) if _reserved(name)}

    assert await _inside(body) == BACKEND_TABLES


async def test_names_that_only_look_reserved_are_allowed() -> None:
    def body(sql: Any) -> set[str]:
        sql.exec("CREATE TABLE t (v DEFAULT 'RENAME TO _cf_x')")
        sql.exec('ALTER TABLE t RENAME TO "x_cf_ -- RENAME TO _cf_y"')
        sql.exec('ALTER TABLE "x_cf_ -- RENAME TO _cf_y" RENAME TO cf_t')
        sql.exec("SELECT 'ALTER TABLE t RENAME TO _cf_t'")
        return _schema_names(sql)

    assert await _inside(body) == BACKEND_TABLES | {"cf_t"}


# -- property: random quoting, comments and string literals ---------------------

# Names built from the pieces that confuse a reader of SQL text.
FRAGMENTS = ["a", "b", "_", "cf", "--", "/*", "*/", '"', "'", "`", "[", "]", " ", ";"]
FRAGMENTS += ["\n", "\u00e9", "RENAME TO _cf_", "-"]
name_text = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=5).map("".join)
names = st.one_of(
    name_text,
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(["_cf_", "_CF_", "_Cf_", "_cF_"]),
        st.lists(st.sampled_from(FRAGMENTS), max_size=3).map("".join),
    ),
)
comment_text = st.text(alphabet="ab -*/'\";\nRENAMETO_cf", max_size=12)
junk = st.lists(
    st.one_of(
        st.just(" "),
        st.just(" "),
        st.just("\n"),
        comment_text.filter(lambda t: "*/" not in t).map(lambda t: f"/*{t}*/"),
        comment_text.map(lambda t: "--" + t.replace("\n", " ") + "\n"),
    ),
    min_size=1,
    max_size=3,
).map("".join)


def quote(name: str, style: str) -> str:
    if style == "double":
        return '"' + name.replace('"', '""') + '"'
    if style == "backtick":
        return "`" + name.replace("`", "``") + "`"
    if style == "single":
        return "'" + name.replace("'", "''") + "'"
    return "[" + name + "]"


def quotings(name: str) -> st.SearchStrategy[str]:
    styles = ["double", "backtick", "single"] + (["bracket"] if "]" not in name else [])
    return st.sampled_from(styles).map(lambda style: quote(name, style))


@st.composite
def statements(draw: st.DrawFn) -> tuple[str, str]:
    """A statement giving an object a random name, and that name."""
    name = draw(names)
    target = draw(quotings(name))
    gap = [draw(junk) for _ in range(4)]
    literal = quote(draw(comment_text), "single")
    kind = draw(st.sampled_from(["rename", "table", "index", "view", "trigger"]))
    if kind == "rename":
        old_name = draw(
            name_text.filter(lambda n: not _reserved(n) and n.lower() != name.lower())
        )
        old = quote(old_name, "double")
        setup = f"CREATE TABLE {old} (v DEFAULT {literal});"
        statement = f"ALTER{gap[0]}TABLE {old}{gap[1]}RENAME{gap[2]}TO{gap[3]}{target}"
        return setup + statement, name
    if kind == "table":
        statement = f"CREATE{gap[0]}TABLE{gap[1]}{target}{gap[2]}(v DEFAULT {literal})"
    elif kind == "index":
        statement = f"CREATE{gap[0]}INDEX{gap[1]}{target}{gap[2]}ON base (v)"
    elif kind == "view":
        statement = f"CREATE{gap[0]}VIEW{gap[1]}{target}{gap[2]}AS SELECT {literal}"
    else:
        statement = (
            f"CREATE{gap[0]}TRIGGER{gap[1]}{target}{gap[2]}AFTER INSERT ON base"
            f" BEGIN SELECT {literal}; END"
        )
    return statement, name


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=statements())
def test_reserved_names_hold_whatever_the_quoting(case: tuple[str, str]) -> None:
    query, name = case

    def body(sql: Any) -> tuple[str | None, set[str]]:
        sql.exec("CREATE TABLE base (v)")
        try:
            sql.exec(query)
        except SqlError as exc:
            outcome: str | None = str(exc)
        else:
            outcome = None
        return outcome, _schema_names(sql)

    outcome, schema = anyio.run(_inside, body)
    reserved = {n for n in schema if _reserved(n)}
    assert reserved == BACKEND_TABLES, query  # never a new reserved name
    if _reserved(name):
        assert outcome is not None, query
        assert outcome.startswith("not authorized"), (query, outcome)
    else:
        assert outcome is None, (query, outcome)
        assert name in schema, query
