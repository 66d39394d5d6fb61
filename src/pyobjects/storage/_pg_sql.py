"""The SQL that :class:`~pyobjects.storage.PostgresBackend` sends to PostgreSQL.

Every statement takes the schema name, checked by the backend, through
``str.format``; everything else travels as parameters.

Tables (one row per object, per commit, per pending alarm, per mark):

``objects``
    The lease (``owner``, ``epoch``, ``expires`` judged by the database
    clock) and what is known without rebuilding the object: ``head`` (the
    sequence number of its last commit), ``holds_data``, its ``name`` and a
    scheduled point-in-time ``restore`` (``"target:before"``).
``commits``
    The object's log: per commit, the pages of its SQLite database that the
    commit changed (``whole = false``) or all of them (``whole = true``, a
    snapshot), zlib-compressed, with the database size after it. The state
    after commit *n* is the newest snapshot at or before *n* with every
    commit after it up to *n* applied in order.
``alarms``
    One row per object with a pending alarm, written by the commit that sets
    or clears it, with the failed attempts at it.
``marks``
    What point-in-time recovery remembers besides the log (undo bookmarks).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACTIVATE",
    "ALARMS",
    "CLAIM_ALARMS",
    "DDL",
    "HOLDER",
    "LIST_IDS",
    "LIST_NAMESPACES",
    "LOG",
    "NODES",
    "NODE_BEAT",
    "NODE_JOIN",
    "NODE_LEAVE",
    "NODE_LIVE",
    "NODE_URL",
    "PRUNE",
    "RELEASE",
    "RELEASE_ALL",
    "RENEW",
    "RETRY",
    "SHIP",
]

DDL: Final = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    "CREATE TABLE IF NOT EXISTS {s}.objects ("
    " namespace text NOT NULL, object_id text NOT NULL,"
    " owner text, epoch bigint NOT NULL DEFAULT 0, expires timestamptz,"
    " head bigint NOT NULL DEFAULT 0, holds_data boolean NOT NULL DEFAULT false,"
    " name text, restore text,"
    " PRIMARY KEY (namespace, object_id))",
    "CREATE TABLE IF NOT EXISTS {s}.commits ("
    " namespace text NOT NULL, object_id text NOT NULL, seq bigint NOT NULL,"
    " epoch bigint NOT NULL, time_ms bigint NOT NULL, whole boolean NOT NULL,"
    " db_pages integer NOT NULL, page_size integer NOT NULL, data bytea NOT NULL,"
    " PRIMARY KEY (namespace, object_id, seq))",
    "CREATE TABLE IF NOT EXISTS {s}.alarms ("
    " namespace text NOT NULL, object_id text NOT NULL, time_ms bigint NOT NULL,"
    " retry_count integer NOT NULL DEFAULT 0, retry_ms bigint,"
    " PRIMARY KEY (namespace, object_id))",
    "CREATE INDEX IF NOT EXISTS alarms_by_time ON {s}.alarms (time_ms)",
    "CREATE TABLE IF NOT EXISTS {s}.marks ("
    " namespace text NOT NULL, object_id text NOT NULL, key text NOT NULL,"
    " value bigint NOT NULL, PRIMARY KEY (namespace, object_id, key))",
    "CREATE INDEX IF NOT EXISTS objects_by_owner ON {s}.objects (owner)",
    # Cluster nodes: where each owner can be reached, and its last heartbeat.
    "CREATE TABLE IF NOT EXISTS {s}.nodes ("
    " owner text PRIMARY KEY, url text NOT NULL, heartbeat timestamptz NOT NULL)",
)

# A node joins, beats, is looked up (live: a heartbeat within $2 seconds), leaves.
NODE_JOIN: Final = (
    "INSERT INTO {s}.nodes (owner, url, heartbeat) VALUES ($1, $2, clock_timestamp())"
    " ON CONFLICT (owner) DO UPDATE SET url = excluded.url,"
    " heartbeat = excluded.heartbeat"
)
NODE_BEAT: Final = "UPDATE {s}.nodes SET heartbeat = clock_timestamp() WHERE owner = $1"
NODE_URL: Final = (
    "SELECT url FROM {s}.nodes WHERE owner = $1"
    " AND heartbeat > clock_timestamp() - $2 * interval '1 second'"
)
NODE_LEAVE: Final = "DELETE FROM {s}.nodes WHERE owner = $1"
NODES: Final = (
    "SELECT url FROM {s}.nodes"
    " WHERE heartbeat > clock_timestamp() - $1 * interval '1 second' ORDER BY url"
)
NODE_LIVE: Final = (
    "SELECT count(*) FROM {s}.nodes WHERE url = $1"
    " AND heartbeat > clock_timestamp() - $2 * interval '1 second'"
)

# Take the lease: a new row, or a row whose lease is free, expired or ours
# already; each taking bumps the epoch, which fences every older holder.
# $1 namespace, $2 id, $3 owner, $4 TTL in seconds.
ACTIVATE: Final = (
    "INSERT INTO {s}.objects AS o (namespace, object_id, owner, epoch, expires)"
    " VALUES ($1, $2, $3, 1, clock_timestamp() + $4 * interval '1 second')"
    " ON CONFLICT (namespace, object_id) DO UPDATE"
    " SET owner = excluded.owner, epoch = o.epoch + 1, expires = excluded.expires"
    " WHERE o.owner IS NULL OR o.owner = excluded.owner"
    " OR o.expires < clock_timestamp()"
    " RETURNING o.epoch, o.head, o.restore"
)

# Who holds an object, and for how much longer (seconds, database clock).
HOLDER: Final = (
    "SELECT owner, epoch, head,"
    " extract(epoch FROM expires - clock_timestamp())::float8"
    " FROM {s}.objects WHERE namespace = $1 AND object_id = $2"
)

# One commit, fenced: everything happens only if the lease row still has our
# owner and epoch and the commit follows the last one, all in one statement
# (one round trip, one implicit transaction; the UPDATE locks the row, so a
# takeover either waits for it or makes it match nothing).
# $1 namespace, $2 id, $3 seq, $4 epoch, $5 owner, $6 holds_data, $7 name,
# $8 time_ms, $9 whole, $10 db_pages, $11 page_size, $12 data,
# $13 alarm to set (or NULL), $14 clear the alarm, $15 clear the restore.
SHIP: Final = (
    "WITH o AS (UPDATE {s}.objects SET head = $3, holds_data = $6,"
    " name = coalesce($7, name),"
    " restore = CASE WHEN $15::boolean THEN NULL ELSE restore END"
    " WHERE namespace = $1 AND object_id = $2 AND epoch = $4 AND owner = $5"
    " AND head = $3 - 1 RETURNING 1),"
    " c AS (INSERT INTO {s}.commits (namespace, object_id, seq, epoch, time_ms,"
    " whole, db_pages, page_size, data)"
    " SELECT $1, $2, $3, $4, $8, $9, $10, $11, $12 FROM o),"
    " a AS (INSERT INTO {s}.alarms (namespace, object_id, time_ms)"
    " SELECT $1, $2, $13 FROM o WHERE $13::bigint IS NOT NULL"
    " ON CONFLICT (namespace, object_id) DO UPDATE"
    " SET time_ms = excluded.time_ms, retry_count = 0, retry_ms = NULL"
    " WHERE alarms.time_ms IS DISTINCT FROM excluded.time_ms),"
    " d AS (DELETE FROM {s}.alarms WHERE namespace = $1 AND object_id = $2"
    " AND $14::boolean AND EXISTS (SELECT 1 FROM o))"
    " SELECT count(*) FROM o"
)

# The log needed to rebuild the state after commit $3: its newest snapshot
# at or before $3, then every commit after it, in order.
LOG: Final = (
    "SELECT seq, whole, db_pages, page_size, data, time_ms FROM {s}.commits"
    " WHERE namespace = $1 AND object_id = $2 AND seq <= $3 AND seq >= ("
    " SELECT max(seq) FROM {s}.commits WHERE namespace = $1 AND object_id = $2"
    " AND whole AND seq <= $3) ORDER BY seq"
)

# Drop the log before snapshot $3 (older than the retention window).
PRUNE: Final = (
    "DELETE FROM {s}.commits WHERE namespace = $1 AND object_id = $2 AND seq < $3"
)

# Renew every lease this owner holds ($1 owner, $2 TTL in seconds).
RENEW: Final = (
    "UPDATE {s}.objects SET expires = clock_timestamp() + $2 * interval '1 second'"
    " WHERE owner = $1 RETURNING namespace, object_id, epoch"
)

# Give leases back: one object ($1 namespace, $2 id, $3 owner, $4 epoch), or
# all of an owner's ($1).
RELEASE: Final = (
    "UPDATE {s}.objects SET owner = NULL, expires = NULL"
    " WHERE namespace = $1 AND object_id = $2 AND owner = $3 AND epoch = $4"
)
RELEASE_ALL: Final = (
    "UPDATE {s}.objects SET owner = NULL, expires = NULL WHERE owner = $1"
)

LIST_IDS: Final = (
    "SELECT object_id FROM {s}.objects WHERE namespace = $1 AND holds_data"
    " ORDER BY object_id"
)
LIST_NAMESPACES: Final = (
    "SELECT DISTINCT namespace FROM {s}.objects WHERE head > 0 ORDER BY namespace"
)

# Pending alarms, but not those of objects another owner ($1) holds now.
ALARMS: Final = (
    "SELECT a.namespace, a.object_id, a.time_ms, a.retry_count, a.retry_ms"
    " FROM {s}.alarms AS a LEFT JOIN {s}.objects AS o"
    " ON o.namespace = a.namespace AND o.object_id = a.object_id"
    " WHERE o.owner IS NULL OR o.owner = $1 OR o.expires < clock_timestamp()"
    " ORDER BY a.time_ms, a.namespace, a.object_id"
)

# Claim due alarms ($2: now, epoch ms) of objects nobody holds, in the
# namespaces $4 this owner ($1) runs: lock those lease rows (skipping rows
# another claimer has locked), take the leases ($3: TTL in seconds).
CLAIM_ALARMS: Final = (
    "WITH due AS (SELECT a.namespace, a.object_id FROM {s}.alarms AS a"
    " JOIN {s}.objects AS o ON o.namespace = a.namespace"
    " AND o.object_id = a.object_id"
    " WHERE a.time_ms <= $2 AND a.namespace = ANY($4::text[])"
    " AND (o.owner IS NULL OR o.expires < clock_timestamp())"
    " ORDER BY a.time_ms LIMIT 100 FOR UPDATE OF o SKIP LOCKED)"
    " UPDATE {s}.objects AS o SET owner = $1, epoch = o.epoch + 1,"
    " expires = clock_timestamp() + $3 * interval '1 second'"
    " FROM due, {s}.alarms AS a"
    " WHERE o.namespace = due.namespace AND o.object_id = due.object_id"
    " AND a.namespace = due.namespace AND a.object_id = due.object_id"
    " RETURNING o.namespace, o.object_id, a.time_ms, a.retry_count, a.retry_ms"
)

RETRY: Final = (
    "UPDATE {s}.alarms SET retry_count = $4, retry_ms = $5"
    " WHERE namespace = $1 AND object_id = $2 AND time_ms = $3"
)
