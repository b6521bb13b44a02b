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

The outbox (see ``rpc/outbox.py``): every write takes the messages that
report it, so an instance record and its state report, or a request's
outcome and its reply, are one transaction and one fsync. After the commit
the messages go to the sink (the publisher) in outbox order.

One live instance per name: ``save_instance`` refuses a record whose name
another live instance holds, in the transaction that would claim it (and a
partial UNIQUE index backs that up), so two racing spawns of one name cannot
both get past it.

One connection shared by all threads behind a lock: writers serialize in
SQLite anyway, and a single connection keeps group commit simple.
``requests`` is a WITHOUT ROWID table with no secondary index: one b-tree
insert per request on the hot path; pruning (every 10 minutes) scans.
"""

import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager

from compute_agent import exception

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
CREATE TABLE IF NOT EXISTS dropped (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    body_head BLOB,
    dropped_at REAL NOT NULL
);
"""
# A journal written before names were claimed may hold two live records of
# one name (the race this closes); then only the check in save_instance
# guards new records, and the clash is logged at start.
NAME_INDEX = ('CREATE UNIQUE INDEX IF NOT EXISTS instances_live_name ON'
              ' instances (name) WHERE deleted = 0 AND name IS NOT NULL')
CACHE_KIB = 512      # SQLite page cache (see Journal.__init__)
INSERT_CHUNK = 500   # rows per INSERT (SQLite binds at most 32766 values)
DROPPED_HEAD = 512   # bytes of a dropped message's body kept for an operator

FILENAME = 'journal.sqlite'
LOG = logging.getLogger(__name__)


class _IdFilter:
    """A Bloom filter of the unique_ids in ``requests``: ``lookup`` of an id
    it has never seen (nearly every message) answers without SQLite, whose
    calls release the GIL and then wait for it behind the worker threads.

    No false negatives: an id is added in the transaction that inserts it.
    Deleted ids stay in until ``Journal.prune`` rebuilds it (false positives
    only cost a query). 2^21 bits (256 KiB), three probes: about 0.3% false
    positives with journal_max_entries (100,000) ids.
    """

    BITS = 21
    MASK = (1 << BITS) - 1

    def __init__(self, ids=()):
        self._bits = bytearray(1 << (self.BITS - 3))
        for uid in ids:
            self.add(uid)

    def add(self, uid):
        h, bits, mask = hash(uid), self._bits, self.MASK
        for i in (h & mask, (h >> 21) & mask, (h >> 42) & mask):
            bits[i >> 3] |= 1 << (i & 7)

    def __contains__(self, uid):
        # Unrolled: this runs for every message on the consume thread.
        h, bits, mask = hash(uid), self._bits, self.MASK
        i = h & mask
        if not bits[i >> 3] & (1 << (i & 7)):
            return False
        i = (h >> 21) & mask
        if not bits[i >> 3] & (1 << (i & 7)):
            return False
        i = (h >> 42) & mask
        return bool(bits[i >> 3] & (1 << (i & 7)))


def _insert(db, head, rows, tail='', chunk=INSERT_CHUNK):
    """``head VALUES (...), (...) tail`` for ``rows``: one statement per
    ``chunk`` rows. executemany steps once per row, giving up the GIL and
    taking it back behind the busy consume thread each time; one statement
    a group took bench/rpc.py's casts from ~17.5k to ~20k a second."""
    width = '(%s)' % ','.join('?' * len(rows[0]))
    for at in range(0, len(rows), chunk):
        part = rows[at:at + chunk]
        db.execute('%s VALUES %s%s' % (head, ','.join([width] * len(part)),
                                       tail),
                   [value for row in part for value in row])


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
        # SQLite's default page cache is 2 MiB per connection, filled by
        # any scan of the instance records (count_by_vm_state, every probe);
        # pages it drops are re-read from the kernel's page cache, not the
        # disk, so a smaller one costs microseconds and keeps the agent
        # smaller (bench/scale.py).
        self._db.execute('PRAGMA cache_size=-%d' % CACHE_KIB)
        self._db.executescript(SCHEMA)
        try:
            self._db.execute(NAME_INDEX)
        except sqlite3.IntegrityError:
            LOG.error('Journal holds live instances sharing a name: %s',
                      self._db.execute(
                          'SELECT name, group_concat(uuid) FROM instances'
                          ' WHERE deleted = 0 GROUP BY name'
                          ' HAVING count(*) > 1').fetchall())
        self._sink = None
        self._memory_ids = itertools.count(1)
        self._seen = self._id_filter()
        self.synced_commits = 0   # commits fsynced (tests, benchmarks)

    def set_sink(self, sink):
        """``sink(messages)`` receives every message after its commit, in
        outbox order (called under the journal's lock: it must be quick and
        must not call the journal)."""
        self._sink = sink

    def close(self):
        with self._lock:
            self._db.close()

    def _id_filter(self):
        return _IdFilter(r[0] for r in self._db.execute(
            'SELECT unique_id FROM requests'))

    @contextmanager
    def _tx(self, durable=True, messages=(), one_statement=False):
        """One transaction; ``messages`` (outbox.Message) go to the sink
        after its commit. The body of each is written with ``_put``.

        ``one_statement``: the body runs a single statement, which SQLite
        commits by itself (autocommit: atomic, and fsynced like a COMMIT).
        Without BEGIN and COMMIT the committer gives the GIL up and takes
        it back behind the busy consume thread two times fewer, and each
        such wait can last a switch interval (bench/README.rst)."""
        with self._lock:
            mode = self._durable_mode if durable else 'NORMAL'
            if mode != self._mode:
                self._db.execute('PRAGMA synchronous=%s' % mode)
                self._mode = mode
            if one_statement:
                yield self._db
            else:
                self._db.execute('BEGIN IMMEDIATE')
                try:
                    yield self._db
                except BaseException:
                    self._db.execute('ROLLBACK')
                    raise
                self._db.execute('COMMIT')
            if mode in ('FULL', 'EXTRA'):
                self.synced_commits += 1
            self._hand_over(messages)

    def _hand_over(self, messages):
        if messages and self._sink is not None:
            self._sink(messages)

    def _put(self, db, messages, sequence=None, now=None):
        """Write durable ``messages`` to the outbox (ids in order); give the
        memory-only ones their ids. A callable body gets ``sequence``."""
        now = now or time.time()
        for m in messages:
            if callable(m.body):
                m.body = m.body(sequence)
            if m.durable:
                m.id = db.execute(
                    'INSERT INTO outbox (kind, exchange, routing_key, body,'
                    ' created_at) VALUES (?,?,?,?,?)',
                    (m.kind, m.exchange, m.routing_key, m.body, now)
                ).lastrowid
            else:
                m.id = 't%d' % next(self._memory_ids)

    def _query(self, sql, args=()):
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------ requests

    def lookup(self, unique_id):
        """The recorded request, or None: ``{status, result, failure, ...}``."""
        if unique_id not in self._seen:
            return None
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

    def record(self, running=(), done=(), messages=(), confirmed=(),
               dropped=(), durable=True):
        """Group commit: one transaction (one fsync) for a batch of changes.

        ``running``: (unique_id, method, instance_uuid) of started requests;
        ``done``: (unique_id, method, instance_uuid, result_json, failure)
        where result_json is the JSON-encoded result and failure a
        serialized failure string or None;
        ``messages``: outbox.Message to publish (the replies);
        ``confirmed``: ids of outbox rows the broker confirmed;
        ``dropped``: (outbox.Message, reason) given up as unpublishable:
        their rows leave the outbox, a trace stays in ``dropped``.
        ``durable``: fsync at commit (see the module doc for when not).
        """
        if not (running or done or confirmed or dropped or any(
                m.durable for m in messages)):
            # Memory-only: no transaction, and no wait for the lock (the
            # consume thread sends read-only replies while a commit fsyncs).
            self._put(None, messages)
            self._hand_over(messages)
            return
        now = time.time()
        gone = list(confirmed) + [m.id for m, _ in dropped if m.durable]
        # A burst of casts: only their outcomes, one INSERT.
        single = not (running or gone or dropped or any(
            m.durable for m in messages)) and len(done) <= INSERT_CHUNK
        with self._tx(durable, messages, one_statement=single) as db:
            for row in itertools.chain(running, done):
                self._seen.add(row[0])
            if running:
                _insert(db, 'INSERT OR IGNORE INTO requests (unique_id,'
                        ' method, instance_uuid, status, created_at)',
                        [(u, m, i, 'running', now) for u, m, i in running])
            if done:
                _insert(db, 'INSERT INTO requests (unique_id, method,'
                        ' instance_uuid, status, result, failure, created_at,'
                        ' finished_at)',
                        [(u, m, i, 'done', res, fail, now, now)
                         for u, m, i, res, fail in done],
                        ' ON CONFLICT (unique_id) DO UPDATE SET'
                        ' status=excluded.status, result=excluded.result,'
                        ' failure=excluded.failure,'
                        ' finished_at=excluded.finished_at')
            self._put(db, messages, now=now)
            if gone:
                db.executemany('DELETE FROM outbox WHERE id = ?',
                               [(i,) for i in gone])
            if dropped:
                db.executemany(
                    'INSERT INTO dropped (kind, routing_key, reason,'
                    ' body_head, dropped_at) VALUES (?,?,?,?,?)',
                    [(m.kind, m.routing_key[:1024], reason,
                      bytes(m.body[:DROPPED_HEAD]), now)
                     for m, reason in dropped])

    def send(self, messages, sync=True):
        """Publish ``messages`` (outbox.Message) with no other change;
        ``sync=False``: no fsync (a host report, stale in seconds anyway)."""
        self.record(messages=messages, durable=sync)

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
            n += db.execute('DELETE FROM dropped WHERE dropped_at < ?',
                            (cutoff,)).rowcount
            if n:
                self._seen = self._id_filter()
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

    def dropped(self):
        """Messages given up as unpublishable: (kind, routing_key, reason,
        body_head, dropped_at), oldest first."""
        return [tuple(r) for r in self._query(
            'SELECT kind, routing_key, reason, body_head, dropped_at FROM'
            ' dropped ORDER BY id')]

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

    def had_instance(self, uuid):
        """Whether ``uuid`` has, or had, a record here (deleted since:
        destroyed, or handed over to another host)."""
        return bool(self._query('SELECT 1 FROM instances WHERE uuid = ? AND'
                                ' name IS NOT NULL', (uuid,)))

    def save_instance(self, uuid, record, messages=()):
        """Store the record and its ``messages`` (its state report) in one
        transaction; bump and return the instance's sequence.

        InstanceInvalidState when another live instance holds the record's
        name: the name is claimed in this transaction, so of two racing
        records of one name exactly one is stored.
        """
        body = json.dumps(record)
        name = record.get('name')
        with self._tx(messages=messages) as db:
            if name is not None:
                other = db.execute(
                    'SELECT uuid FROM instances WHERE name = ? AND'
                    ' deleted = 0 AND uuid != ?', (name, uuid)).fetchone()
                if other:
                    raise exception.InstanceInvalidState(
                        'Instance %s cannot use name %r: instance %s has it'
                        % (uuid, name, other[0]))
            row = db.execute('SELECT sequence FROM instances WHERE uuid = ?',
                             (uuid,)).fetchone()
            seq = (row[0] if row else 0) + 1
            now = time.time()
            db.execute(
                'INSERT INTO instances (uuid, name, record, sequence, deleted,'
                ' updated_at) VALUES (?,?,?,?,0,?) ON CONFLICT (uuid) DO UPDATE'
                ' SET name=excluded.name, record=excluded.record,'
                ' sequence=excluded.sequence, deleted=0,'
                ' updated_at=excluded.updated_at',
                (uuid, name, body, seq, now))
            self._put(db, messages, seq, now)
        return seq

    def continue_sequence(self, uuid, sequence):
        """Raise the instance's sequence to ``sequence`` (a migrated-in
        instance goes on from the source's last number; never lowered)."""
        with self._tx() as db:
            db.execute('UPDATE instances SET sequence = ? WHERE uuid = ? AND'
                       ' sequence < ?', (int(sequence), uuid, int(sequence)))

    def next_sequence(self, uuid, messages=()):
        """Bump and return the sequence, leaving the record as it is; write
        ``messages`` (a report of a rejected request) in the same commit.

        For a uuid with no live record a tombstone row keeps the numbers
        increasing for a later spawn.
        """
        now = time.time()
        with self._tx(messages=messages) as db:
            db.execute("INSERT INTO instances (uuid, name, record, sequence,"
                       " deleted, updated_at) VALUES (?, NULL, '{}', 0, 1, ?)"
                       ' ON CONFLICT (uuid) DO NOTHING', (uuid, now))
            db.execute('UPDATE instances SET sequence = sequence + 1,'
                       ' updated_at = ? WHERE uuid = ?', (now, uuid))
            seq = db.execute('SELECT sequence FROM instances WHERE uuid = ?',
                             (uuid,)).fetchone()[0]
            self._put(db, messages, seq, now)
        return seq

    def list_instances(self):
        return [json.loads(r[0]) for r in self._query(
            'SELECT record FROM instances WHERE deleted = 0 ORDER BY uuid')]

    def instances_with(self, *keys):
        """The live records with a non-null value at any of ``keys`` (top
        level), oldest uuid first. SQLite picks them out, so a periodic
        task looking for a few marked records does not decode every record
        (with a thousand, ~6 MB of short-lived dicts that leave the heap
        fragmented)."""
        return [json.loads(r[1]) for r in self._marked(0, keys)]

    def _marked(self, deleted, keys):
        """(uuid, record JSON) rows, live (0) or deleted (1), with a
        non-null value at any of the top-level ``keys``."""
        if not keys:
            return []
        where = ' OR '.join(['json_extract(record, ?) IS NOT NULL'] * len(keys))
        return self._query(
            'SELECT uuid, record FROM instances WHERE deleted = ? AND (%s)'
            ' ORDER BY uuid' % where, (deleted,) + tuple('$.' + k for k in keys))

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

    def delete_instance(self, uuid, tombstone=None):
        """Delete the record; ``tombstone`` (a dict) stays in its row until
        the uuid is saved again (a live migration's outcome, for the
        redelivery of the request that moved it away)."""
        with self._tx() as db:
            db.execute('UPDATE instances SET deleted = 1, record = ?,'
                       ' updated_at = ? WHERE uuid = ?',
                       (json.dumps(tombstone or {}), time.time(), uuid))

    def tombstone(self, uuid):
        """What ``delete_instance`` kept of a deleted record, or None."""
        rows = self._query('SELECT record FROM instances'
                           ' WHERE uuid = ? AND deleted = 1', (uuid,))
        return json.loads(rows[0][0]) if rows else None

    # -- a live migration's cleanup left to retry (migration_settle) --
    def tombstones_with(self, key):
        """[(uuid, tombstone)] of the deleted records whose tombstone has
        ``key``."""
        return [(r[0], json.loads(r[1])) for r in self._marked(1, (key,))]

    def update_tombstone(self, uuid, tombstone):
        """Rewrite a deleted record's tombstone (never a live record)."""
        with self._tx() as db:
            db.execute('UPDATE instances SET record = ? WHERE uuid = ? AND'
                       ' deleted = 1', (json.dumps(tombstone), uuid))
