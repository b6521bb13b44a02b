"""Settling cold migrations and cold reverts a death interrupted (docs:
protocol-migration-crashes). Mixed into ``Manager``; migration_settle's
rounds (at start, then every ``[libvirt] live_migration_settle_interval``)
hand it the records ``cold_step`` names.

One agent coordinates each step and writes its decision to its journal
before acting on it, so the other never has to guess:

* ``migrate``: the source. Its mark not yet decided: abort (the
  destination drops its copy, best effort, and never starts the guest on
  its own, so this is safe while it does not answer; the guest starts here,
  ``migrate.error`` with this host). Decided: the destination takes over
  (asked again next round while it does not answer or fails; the guest
  stays stopped on both hosts meanwhile), then this host lets go.
* The destination's ``incoming`` cold record asks the source
  (``_migration_status``): decided for this host, take over; still copying
  to this host, wait; anything else, remove the copy and the record.
* ``revert_resize`` of a cold-migrated instance: the destination (the
  owner until the source restored) asks the source to restore again; the
  restore is repeatable and answers the source's record once it owns it.
"""

import logging

from compute_agent import exception
from compute_agent.rpc import peer as peer_mod

LOG = logging.getLogger(__name__)


def cold_step(record):
    """The cold-migration step a record is in the middle of: 'source'
    (migrate, on the source), 'incoming' (migrate, on the destination),
    'revert' (revert_resize, on the destination), else None."""
    if record is None:
        return None
    if (record.get('incoming') or {}).get('cold'):
        return 'incoming'
    cold = (record.get('migration') or {}).get('cold')
    if cold is True:
        return 'source'
    if cold == 'revert':
        return 'revert'
    return None


def source_verdict(mark):
    """The source's next step: 'abort' before its decision, else 'hand-over'."""
    return 'hand-over' if mark.get('decided') else 'abort'


def incoming_verdict(there, host):
    """The destination's next step from the source's ``_migration_status``:
    'take-over', 'wait' or 'remove'."""
    mark = there.get('migration') or {}
    if (there.get('holds') == 'owner' and mark.get('cold') is True
            and mark.get('dest') == host):
        return 'take-over' if mark.get('decided') == host else 'wait'
    return 'remove'


class ColdMigrationSettlement:

    def settle_cold(self, record):
        """Settle one record ``cold_step`` names; True when settled."""
        uuid, step = record['uuid'], cold_step(record)
        if step == 'incoming':
            return self._settle_cold_incoming(record)
        with self._lock(uuid):
            if uuid in self._moving:
                return True             # a request of this process moves it
            now = self.journal.get_instance(uuid)
            if cold_step(now) != step:
                return True             # settled meanwhile
            if step == 'source':
                return self.settle_cold_source(now)
            context = {'request_id': now['migration'].get('request_id')}
            try:
                self.cold_revert_step(context, now, settling=True)
            except exception.MigrationError as exc:
                LOG.info('%s: interrupted revert: %s', uuid, exc)
            return cold_step(self.journal.get_instance(uuid)) is None

    def settle_cold_source(self, record):
        """The source's record mid-migrate (lock held): abort or hand over."""
        uuid, mark = record['uuid'], record['migration']
        context = {'request_id': mark.get('request_id')}
        if source_verdict(mark) == 'abort':
            LOG.info('%s: interrupted before deciding for %s; the guest '
                     'stays here', uuid, mark['dest'])
            self.cold_abort(context, record, exception.MigrationError(
                uuid=uuid, reason='interrupted; the guest stays on %s'
                % self.host))
            return True
        LOG.info('%s: decided for %s before a death; handing over', uuid,
                 mark['dest'])
        try:
            with peer_mod.Peer(self.conf, mark['dest'], context) as peer:
                self.cold_hand_over(context, record, peer, attempts=1)
        except exception.MigrationError as exc:
            LOG.info('%s: not handed over yet: %s', uuid, exc)
            return False
        return True

    def _settle_cold_incoming(self, record):
        uuid, source = record['uuid'], record['incoming']['source']
        # Asked without the lock: the source's hand-over may need it.
        with peer_mod.Peer(self.conf, source) as peer:
            there = peer.call('_migration_status', uuid)
        with self._lock(uuid):
            now = self.journal.get_instance(uuid)
            if now != record:
                return cold_step(now) != 'incoming'
            verdict = incoming_verdict(there, self.host)
            if verdict == 'wait':
                return False
            if verdict == 'remove':
                LOG.info('%s: %s no longer migrates it here; removing the '
                         'copy', uuid, source)
                self._undo_incoming(record)
                return True
            LOG.info('%s: %s decided for this host; taking over', uuid, source)
            self.cold_take_over(
                {'request_id': there['migration'].get('request_id')}, record,
                {'sequence': there.get('sequence', 0)})
            return True
