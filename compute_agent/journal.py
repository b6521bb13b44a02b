"""The agent's on-disk journal: request outcomes, the outbox, instances.

One SQLite file, ``<state_path>/journal.sqlite``, in WAL mode. A request is
acknowledged only after its outcome is recorded on disk, and a reply or
report is deleted from the outbox only after the broker confirmed it, so those
commits must survive a power cut, not just a process crash: they run with
``synchronous=FULL`` (the WAL is fsynced at commit). An fsync costs 0.4-5 ms
on these machines; the server amortizes it by recording every request that
finished during one loop turn in a single transaction (group commit, see
``record``).

Commits that need not survive a power cut run with ``synchronous=NORMAL``
(written to the WAL, no fsync; a later FULL commit syncs them too): outcomes
of read-only requests, which are harmless to run again, 'running' markers and
deletions of confirmed outbox rows (at worst a duplicate is sent again).

One connection shared by all threads behind a lock: writers serialize in
SQLite anyway, and a single connection keeps group commit simple.
``requests`` is a WITHOUT ROWID table with no secondary index: one b-tree
insert per request on the hot path; pruning (every 10 minutes) scans.
"""

import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    unique_id TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    instance_uuid TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'done')),
    result TEXT,
    failure TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL DEFAULT 'report',
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    uuid TEXT PRIMARY KEY,
    name TEXT,
    record TEXT NOT NULL,
    sequence INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
"""

FILENAME = 'journal.sqlite'
LOG = logging.getLogger(__name__)


class Journal:

    def __init__(self, state_path, synchronous='FULL'):
        os.makedirs(state_path, mode=0o700, exist_ok=True)
        self.path = os.path.join(state_path, FILENAME)
        self._durable_mode = synchronous
        self._mode = None
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None,
                                   check_same_thread=False, timeout=30)
        self._db.execute('PRAGMA journal_mode=WAL')
        self._db.executescript(SCHEMA)

    def close(self):
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self, durable=True):
        with self._lock:
            mode = self._durable_mode if durable else 'NORMAL'
            if mode != self._mode:
                self._db.execute('PRAGMA synchronous=%s' % mode)
                self._mode = mode
            self._db.execute('BEGIN IMMEDIATE')
            try:
                yield self._db
            except BaseException:
                self._db.execute('ROLLBACK')
                raise
            self._db.execute('COMMIT')

    def _query(self, sql, args=()):
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------ requests

    def lookup(self, unique_id):
        """The recorded request, or None: ``{status, result, failure, ...}``."""
        rows = self._query(
            'SELECT unique_id, method, instance_uuid, status, result, failure,'
            ' created_at, finished_at FROM requests WHERE unique_id = ?',
            (unique_id,))
        if not rows:
            return None
        r = rows[0]
        return {'unique_id': r[0], 'method': r[1], 'instance_uuid': r[2],
                'status': r[3], 'result_json': r[4] or 'null',
                'result': None if r[4] is None else json.loads(r[4]),
                'failure': r[5], 'created_at': r[6], 'finished_at': r[7]}

    def record(self, running=(), done=(), outbox=(), delete_outbox=(),
               durable=True):
        """Group commit: one transaction (one fsync) for a batch of changes.

        ``running``: (unique_id, method, instance_uuid) of started requests;
        ``done``: (unique_id, method, instance_uuid, result_json, failure)
        where result_json is the JSON-encoded result and failure a
        serialized failure string or None;
        ``outbox``: (kind, exchange, routing_key, body) to publish;
        ``delete_outbox``: ids of outbox rows the broker confirmed.
        ``durable``: fsync at commit (see the module doc for when not).
        Returns the new outbox ids, in order.
        """
        if not (running or done or outbox or delete_outbox):
            return []
        now = time.time()
        ids = []
        with self._tx(durable) as db:
            if running:
                db.executemany(
                    'INSERT OR IGNORE INTO requests (unique_id, method,'
                    ' instance_uuid, status, created_at) VALUES (?,?,?,?,?)',
                    [(u, m, i, 'running', now) for u, m, i in running])
            if done:
                db.executemany(
                    'INSERT INTO requests (unique_id, method, instance_uuid,'
                    ' status, result, failure, created_at, finished_at)'
                    ' VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (unique_id) DO'
                    ' UPDATE SET status=excluded.status,'
                    ' result=excluded.result, failure=excluded.failure,'
                    ' finished_at=excluded.finished_at',
                    [(u, m, i, 'done', res, fail, now, now)
                     for u, m, i, res, fail in done])
            for kind, exchange, key, body in outbox:
                cur = db.execute(
                    'INSERT INTO outbox (kind, exchange, routing_key, body,'
                    ' created_at) VALUES (?,?,?,?,?)',
                    (kind, exchange, key, body, now))
                ids.append(cur.lastrowid)
            if delete_outbox:
                db.executemany('DELETE FROM outbox WHERE id = ?',
                               [(i,) for i in delete_outbox])
        return ids

    def forget_running(self):
        """Delete 'running' rows left by a previous process; return them.

        Nothing runs them any more: their messages, unacknowledged, will be
        redelivered and must run again.
        """
        with self._tx(durable=False) as db:
            rows = db.execute("SELECT unique_id, method, instance_uuid FROM"
                              " requests WHERE status = 'running'").fetchall()
            db.execute("DELETE FROM requests WHERE status = 'running'")
        return rows

    def prune(self, max_age, max_entries):
        """Drop finished requests older than max_age or beyond max_entries,
        and instance tombstones older than max_age; return the rows dropped.

        A tombstone only keeps a deleted (or never created) uuid's sequence
        increasing; once its requests are forgotten too, a uuid spawned
        again starts over, like a new one.
        """
        cutoff = time.time() - max_age
        with self._tx(durable=False) as db:
            n = db.execute("DELETE FROM requests WHERE status = 'done' AND"
                           " finished_at < ?", (cutoff,)).rowcount
            n += db.execute(
                "DELETE FROM requests WHERE status = 'done' AND unique_id IN"
                " (SELECT unique_id FROM requests WHERE status = 'done'"
                "  ORDER BY finished_at DESC LIMIT -1 OFFSET ?)",
                (max_entries,)).rowcount
            n += db.execute('DELETE FROM instances WHERE deleted = 1 AND'
                            ' updated_at < ?', (cutoff,)).rowcount
        return n

    def prune_periodically(self, max_age, max_entries, stop, interval=600):
        """Prune every ``interval`` s until ``stop`` is set (a thread's
        target: pruning stays off the consume thread's hot path)."""
        while not stop.wait(interval):
            try:
                n = self.prune(max_age, max_entries)
                if n:
                    LOG.info('Pruned %d journal rows (finished requests, '
                             'instance tombstones)', n)
            except Exception:  # noqa: BLE001 - try again next time
                LOG.exception('Journal prune failed')

    # -------------------------------------------------------------- outbox

    def outbox_add(self, kind, exchange, routing_key, body):
        return self.record(outbox=[(kind, exchange, routing_key, body)])[0]

    def outbox_delete(self, ids):
        if ids:
            with self._tx(durable=False) as db:
                db.executemany('DELETE FROM outbox WHERE id = ?',
                               [(i,) for i in ids])

    def outbox_load(self):
        """Every waiting entry, oldest first: (id, kind, exchange, key, body)."""
        return [tuple(r) for r in self._query(
            'SELECT id, kind, exchange, routing_key, body FROM outbox'
            ' ORDER BY id')]

    def outbox_count(self):
        return self._query('SELECT count(*) FROM outbox')[0][0]

    # ----------------------------------------------------------- instances
    # A deleted instance keeps a tombstone row so that its sequence keeps
    # increasing if the same uuid is spawned again.

    def get_instance(self, uuid):
        """The record as last saved, or None."""
        rows = self._query('SELECT record FROM instances'
                           ' WHERE uuid = ? AND deleted = 0', (uuid,))
        return json.loads(rows[0][0]) if rows else None

    def instance_sequence(self, uuid):
        rows = self._query('SELECT sequence FROM instances WHERE uuid = ?',
                           (uuid,))
        return rows[0][0] if rows else 0

    def save_instance(self, uuid, record):
        """Store the record; bump and return the instance's sequence."""
        body = json.dumps(record)
        with self._tx() as db:
            row = db.execute('SELECT sequence FROM instances WHERE uuid = ?',
                             (uuid,)).fetchone()
            seq = (row[0] if row else 0) + 1
            db.execute(
                'INSERT INTO instances (uuid, name, record, sequence, deleted,'
                ' updated_at) VALUES (?,?,?,?,0,?) ON CONFLICT (uuid) DO UPDATE'
                ' SET name=excluded.name, record=excluded.record,'
                ' sequence=excluded.sequence, deleted=0,'
                ' updated_at=excluded.updated_at',
                (uuid, record.get('name'), body, seq, time.time()))
        return seq

    def next_sequence(self, uuid):
        """Bump and return the sequence, leaving the record as it is.

        For a report about a uuid with no live record (a rejected request):
        a tombstone row keeps the numbers increasing for a later spawn.
        """
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO instances (uuid, name, record, sequence,"
                       " deleted, updated_at) VALUES (?, NULL, '{}', 0, 1, ?)"
                       ' ON CONFLICT (uuid) DO NOTHING', (uuid, now))
            db.execute('UPDATE instances SET sequence = sequence + 1,'
                       ' updated_at = ? WHERE uuid = ?', (now, uuid))
            return db.execute('SELECT sequence FROM instances WHERE uuid = ?',
                              (uuid,)).fetchone()[0]

    def list_instances(self):
        return [json.loads(r[0]) for r in self._query(
            'SELECT record FROM instances WHERE deleted = 0 ORDER BY uuid')]

    def instance_uuids(self):
        """uuids of the live records, without decoding any record."""
        return [r[0] for r in self._query(
            'SELECT uuid FROM instances WHERE deleted = 0 ORDER BY uuid')]

    def count_by_vm_state(self):
        """{vm_state: live records}, counted by SQLite: decoding every
        record each report_interval cost CPU and memory with many."""
        return dict(self._query(
            "SELECT json_extract(record, '$.vm_state'), count(*) FROM instances"
            ' WHERE deleted = 0 GROUP BY 1'))

    def delete_instance(self, uuid):
        with self._tx() as db:
            db.execute("UPDATE instances SET deleted = 1, record = '{}',"
                       ' updated_at = ? WHERE uuid = ?', (time.time(), uuid))
