"""A notes store on SQL, with schema migrations done the Cloudflare-safe way.

    python examples/sql_migration.py

``PRAGMA user_version`` is refused inside a Durable Object (as in Cloudflare),
so the object keeps its schema version in a table of its own,
``_schema_version``, and applies the missing migrations, in order, when it
starts: from the constructor, inside ``transaction_sync()`` so that they
apply all together or not at all.

The script runs the object twice on one SQLiteBackend directory (a temporary
one): first as version 1 of the code (migration 1 only), then, after a
restart of the runtime, as version 2, which adds an index. The notes written
by version 1 survive the restart and the migration.
"""

from __future__ import annotations

import tempfile
from typing import Any, ClassVar

import anyio

from pyobjects import DurableObject, DurableObjectState, Runtime
from pyobjects.storage import SQLiteBackend

# Migration N brings the schema from version N - 1 to N. Append new ones;
# never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    # 1: the notes
    """
    CREATE TABLE notes (
        id INTEGER PRIMARY KEY,
        text TEXT NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL
    );
    """,
    # 2: listing the open notes, newest first, without scanning every note
    "CREATE INDEX notes_open ON notes (done, created_ms);",
)
OPEN_NOTES = "SELECT text FROM notes WHERE done = 0 ORDER BY created_ms DESC, id DESC"


class Notes(DurableObject):
    """One user's notes, in the object's own SQL database."""

    migrations: ClassVar[tuple[str, ...]] = MIGRATIONS

    def __init__(self, ctx: DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        self.sql = ctx.storage.sql
        # SQL is synchronous, so the migrations finish before the first
        # call is delivered; if one fails, the call fails and nothing of it
        # is kept.
        self.migrated_from = ctx.storage.transaction_sync(self._migrate)

    def _migrate(self) -> int:
        """Apply the migrations this database lacks; return the old version."""
        sql = self.sql
        sql.exec(
            "CREATE TABLE IF NOT EXISTS _schema_version (version INTEGER NOT NULL)"
        )
        row = next(sql.exec("SELECT max(version) AS v FROM _schema_version"))
        current = row["v"] or 0
        if current > len(self.migrations):
            raise RuntimeError(
                f"the database has schema version {current}, newer than this "
                f"code ({len(self.migrations)}): deploy the newer code"
            )
        for version in range(current + 1, len(self.migrations) + 1):
            sql.exec(self.migrations[version - 1])
            sql.exec("INSERT INTO _schema_version (version) VALUES (?)", version)
        return current

    async def schema(self) -> dict[str, Any]:
        version = self.sql.exec("SELECT max(version) AS v FROM _schema_version").one()
        indexes = self.sql.exec("PRAGMA index_list(notes)").to_array()
        return {
            "version": version["v"],
            "migrated_from": self.migrated_from,
            "indexes": sorted(index["name"] for index in indexes),
        }

    async def add(self, text: str) -> int:
        row = self.sql.exec(
            "INSERT INTO notes (text, created_ms) VALUES (?, ?) RETURNING id",
            text,
            self.ctx.now_ms(),
        ).one()
        return int(row["id"])

    async def finish(self, note_id: int) -> bool:
        cursor = self.sql.exec("UPDATE notes SET done = 1 WHERE id = ?", note_id)
        return cursor.rows_written == 1

    async def open_notes(self) -> list[str]:
        return [row["text"] for row in self.sql.exec(OPEN_NOTES)]

    async def plan(self) -> str:
        """How SQLite runs the open_notes() query."""
        rows = self.sql.exec(f"EXPLAIN QUERY PLAN {OPEN_NOTES}")
        return "; ".join(row["detail"] for row in rows)


class NotesV1(Notes):
    """The code as first deployed: migration 1 only."""

    migrations = MIGRATIONS[:1]


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pyobjects-notes-") as directory:
        # Run 1: version 1 of the code creates the table and stores notes.
        async with Runtime(
            bindings={"NOTES": NotesV1}, storage=SQLiteBackend(directory)
        ) as rt:
            notes = rt.env.NOTES.get_by_name("ada")
            for text in ("buy milk", "write the report", "call Charles"):
                await notes.add(text)
            await notes.finish(1)
            schema = await notes.schema()
            print(
                f"run 1: schema version {schema['version']} "
                f"(migrated from {schema['migrated_from']}), "
                f"indexes {schema['indexes']}"
            )
            print(f"run 1: query plan: {await notes.plan()}")

        # Run 2: the runtime restarts with version 2 of the code, which
        # finds version 1 on disk and applies migration 2.
        async with Runtime(
            bindings={"NOTES": Notes}, storage=SQLiteBackend(directory)
        ) as rt:
            notes = rt.env.NOTES.get_by_name("ada")
            schema = await notes.schema()
            print(
                f"run 2: schema version {schema['version']} "
                f"(migrated from {schema['migrated_from']}), "
                f"indexes {schema['indexes']}"
            )
            print(f"run 2: open notes after the restart: {await notes.open_notes()}")
            print(f"run 2: query plan: {await notes.plan()}")


if __name__ == "__main__":
    anyio.run(main)
