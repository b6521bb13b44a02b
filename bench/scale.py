"""Benchmark: how the agent scales with the number of instances it records.

Not a test. Needs RabbitMQ on localhost:5672 and ``qemu-img``; no libvirtd:
the agent runs on libvirt's in-process mock hypervisor (``[libvirt]
connection_uri = test:///default``, ``virt_type = qemu``), so what is
measured is the agent itself (RPC, journal, builder, disks), not QEMU.

It starts two real ``compute-agent`` processes, each with its own host,
topic, exchange and state topic on the shared broker and its own work
directory under ``$CA_BENCH_WORKDIR`` (default
``/var/tmp/compute-agent-bench``): one keeps 10 instances, the other
--instances (default 1,000), filled by casts, --parallel at a time. Calls
alternate between the two, so load from elsewhere on the machine hits both
alike. In one run:

  idle RSS   VmRSS of the first agent once it answers ping and is idle
             (target <= 60 MB);
  spawn      --samples sequential spawn calls on each (a new instance each
             time, destroyed again untimed afterwards): p50 at 1,000 / p50
             at 10 (target <= 1.2);
  get_info   3 x --samples get_info calls of recorded instances on each,
             once both agents are idle (< 5 % CPU over 2 s): the same
             ratio (target <= 1.2);
  RSS        VmRSS of the agent with 1,000 instances (target <= 80 MB).
  floors     VmRSS of a bare Python process that imports only oslo.config,
             kombu and libvirt and opens test:///default, with no domain
             and with --instances domains defined and started from the
             agent's own domain XML (the test driver's share): what any
             agent on this stack costs. A third floor adds the rest of the
             agent's stack: a broker connection with a queue, oslo.log,
             sqlite3, lxml and libvirt's domain.rng compiled, each domain
             checked against it before it is defined. The agent's excess
             over each is printed beside it.

Instances are kvm-style guests of 64 MiB with a qcow2 overlay root disk of a
1 MiB image from a file:// image store, no VIFs, no config drive. Note that
``test:///default`` keeps its domains in the agent's own memory (about 10 kB
each), which is in the RSS.

    .venv/bin/python bench/scale.py [--instances 1000] [--samples 30]
                                    [--parallel 8] [--keep]

Exit status: 0 every target met, 1 a target missed, 2 the run failed.
Everything it makes (the agents, queues, exchanges, the work directory) is
removed at the end, also on Ctrl-C (--keep keeps the directories and logs).
"""

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

URL = 'rabbit://guest:guest@localhost:5672/'
KOMBU_URL = URL.replace('rabbit://', 'amqp://', 1)   # kombu's own scheme
WORK_ROOT = os.environ.get('CA_BENCH_WORKDIR', '/var/tmp/compute-agent-bench')
AGENT = os.path.join(REPO, '.venv', 'bin', 'compute-agent')
MB = 1024 * 1024

TARGET_RATIO = 1.2
TARGET_RSS_MB = 80
TARGET_IDLE_MB = 60


class Failed(Exception):
    pass


# The floor process: the stack any agent needs (oslo.config, kombu, libvirt)
# and test:///default holding the same domains the agent defines.
FLOOR_CODE = r'''
import sys
import uuid

import kombu
import kombu.connection  # noqa: F401 - what serving RPC needs
import libvirt
from oslo_config import cfg  # noqa: F401

template, count, stack = open(sys.argv[1]).read(), int(sys.argv[2]), sys.argv[3]
check = None
if stack == 'stack':
    # The rest of the agent's stack: a broker connection with a queue,
    # its logging, its journal's SQLite, lxml and libvirt's domain schema
    # compiled, each domain checked against it.
    import sqlite3  # noqa: F401
    import oslo_log.log  # noqa: F401
    from lxml import etree
    check = etree.RelaxNG(file=sys.argv[4]).assertValid
    broker = kombu.Connection(sys.argv[5])
    broker.default_channel.queue_declare('', exclusive=True)
libvirt.registerErrorHandler(lambda *a: None, None)
conn = libvirt.open('test:///default')
for i in range(count):
    u = str(uuid.uuid4())
    xml = template.replace('@UUID@', u).replace('@NAME@', 'floor-%d' % i)
    if check:
        check(etree.fromstring(xml))
    conn.defineXML(xml).create()
with open('/proc/self/status') as f:
    print([line.split()[1] for line in f if line.startswith('VmRSS:')][0])
'''


def floor_mb(xml_path, count, stack=False):
    """VmRSS (MB) of the floor process with ``count`` domains (``stack``:
    with the agent's other libraries and its schema check)."""
    from compute_agent.virt import schema
    out = subprocess.run([sys.executable, '-c', FLOOR_CODE, xml_path, str(count),
                          'stack' if stack else 'bare',
                          os.path.join(schema.SCHEMA_DIR, 'domain.rng'),
                          KOMBU_URL],
                         check=True, capture_output=True,
                         text=True, timeout=600)
    return int(out.stdout.split()[-1]) * 1024 / MB


def log(msg):
    print('bench/scale: %s' % msg, file=sys.stderr, flush=True)


def rss_mb(pid):
    """VmRSS of ``pid`` in MB (from /proc/<pid>/status)."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024 / MB
    raise Failed('no VmRSS for pid %d' % pid)


def cpu_s(pid):
    """User + system CPU seconds of ``pid`` so far."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


class Agent:
    """One real agent on test:///default with its own names and directory."""

    IMAGE_META = {'id': 'scale-root', 'disk_format': 'qcow2'}

    def __init__(self, label, args):
        self.args = args
        self.suffix = '%s-%s' % (label, uuid.uuid4().hex[:8])
        self.prefix = 'sc-%s-' % self.suffix
        self.host = 'bench-scale-' + self.suffix
        self.topic = 'bench-scale-' + self.suffix
        self.exchange = 'bench-scale-' + self.suffix
        self.state_topic = 'bench-scale-state-' + self.suffix
        self.work = self.proc = self.client = self.conf = None
        self.log_path = None
        self.recorded = []          # instances that stay
        self.n = 0

    # ------------------------------------------------------------- setup

    def start(self):
        os.makedirs(WORK_ROOT, exist_ok=True)
        self.work = tempfile.mkdtemp(prefix='scale-', dir=WORK_ROOT)
        images = os.path.join(self.work, 'images')
        os.mkdir(images)
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                        os.path.join(images, 'scale-root'), '1M'], check=True)
        conf_path = os.path.join(self.work, 'agent.conf')
        with open(conf_path, 'w') as f:
            f.write(f"""[DEFAULT]
host = {self.host}
state_path = {self.work}/state
instances_path = {self.work}/instances
transport_url = {URL}
control_exchange = {self.exchange}
max_concurrent_builds = {self.args.parallel}
graceful_shutdown_timeout = 10
[rpc]
topic = {self.topic}
state_topic = {self.state_topic}
[libvirt]
virt_type = qemu
connection_uri = test:///default
[images]
image_store_url = file://{images}
""")
        from oslo_config import cfg

        from compute_agent import conf as agent_conf
        self.conf = agent_conf.register_all(cfg.ConfigOpts())
        self.conf(['--config-file', conf_path], project='compute-agent',
                  default_config_files=[], default_config_dirs=[])
        self.log_path = os.path.join(self.work, 'agent.log')
        self.proc = subprocess.Popen(
            [AGENT, '--config-file', conf_path, '--log-file', self.log_path],
            start_new_session=True, stdin=subprocess.DEVNULL)

        from compute_agent.rpc.client import AgentClient
        self.client = AgentClient(URL, self.host, topic=self.topic,
                                  exchange=self.exchange, timeout=60,
                                  state_topic=self.state_topic)

    def wait_ready(self):
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise Failed('the agent exited (%s); see %s'
                             % (self.proc.returncode, self.log_path))
            try:
                self.client.ping(timeout=2)
                return
            except Exception:   # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise Failed('the agent does not answer ping; see %s'
                                 % self.log_path) from None
                time.sleep(0.2)

    def rss_mb(self):
        return rss_mb(self.proc.pid)

    # ---------------------------------------------------------- requests

    def instance(self):
        self.n += 1
        return {'uuid': str(uuid.uuid4()), 'name': '%s%d' % (self.prefix, self.n),
                'image_ref': 'scale-root',
                'flavor': {'memory_mb': 64, 'vcpus': 1, 'root_gb': 0}}

    def fill(self, count):
        """Spawn by casts until ``count`` instances are recorded; waits on
        the state reports (a list_instances poll would itself swell the
        agent with every record decoded)."""
        batch = [self.instance() for _ in range(count - len(self.recorded))]
        watcher = self.client.open_watch()
        try:
            for inst in batch:
                self.client.spawn(inst, self.IMAGE_META, cast=True)
            waiting = {i['uuid'] for i in batch}
            deadline = time.monotonic() + 60 + len(batch) * 0.5
            while waiting:
                if time.monotonic() > deadline:
                    raise Failed('%d of %d spawns unfinished; see %s'
                                 % (len(waiting), len(batch), self.log_path))
                event = watcher.get(timeout=1)
                if event is None or event[0] != 'instance_state_changed':
                    continue
                args = event[1]
                if args.get('event') == 'spawn.error':
                    raise Failed('spawn failed: %s' % args.get('error'))
                if args.get('event') == 'spawn.end' and args.get('vm_state') == 'active':
                    waiting.discard(args.get('instance_uuid'))
        finally:
            watcher.close()
        self.recorded += batch

    def timed_spawn(self):
        inst = self.instance()
        t0 = time.perf_counter()
        rec = self.client.spawn(inst, self.IMAGE_META, timeout=60)
        took = time.perf_counter() - t0
        if rec['vm_state'] != 'active':
            raise Failed('spawn ended %s: %s' % (rec['vm_state'], rec['error']))
        return took, inst

    def timed_get_info(self):
        u = random.choice(self.recorded)['uuid']
        t0 = time.perf_counter()
        self.client.get_info(u, timeout=60)
        return time.perf_counter() - t0

    def settle(self, timeout=120):
        """Wait until the agent is idle (< 5 % of a CPU over 2 s): after a
        burst of spawns it still works through libvirt's lifecycle events
        for a while, which is not what this measures."""
        deadline = time.monotonic() + timeout
        before = cpu_s(self.proc.pid)
        while time.monotonic() < deadline:
            time.sleep(2)
            now = cpu_s(self.proc.pid)
            if now - before < 0.1:
                return
            before = now
        log('%s did not become idle within %ds' % (self.host, timeout))

    def domain_xml(self):
        """The domain XML this agent defines for a spawn, with @UUID@ and
        @NAME@ where the instance's uuid and name go (for the floor)."""
        from compute_agent import validation
        from compute_agent.virt import builder
        inst = self.instance()
        args = validation.validate('spawn', {'instance': inst,
                                             'image_meta': self.IMAGE_META})
        plan = builder.build(self.conf, args['instance'], args['image_meta'],
                             [], None)
        xml = plan.domain.to_xml()
        return xml.replace(inst['uuid'], '@UUID@').replace(inst['name'],
                                                           '@NAME@')

    # ---------------------------------------------------------- cleanup

    def cleanup(self):
        import contextlib
        ign = contextlib.suppress(Exception)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.client is not None:
            with ign:
                self.client.close()
        if self.conf is not None:
            with ign:
                import kombu

                from compute_agent.rpc import topology
                with kombu.Connection(KOMBU_URL) as c:
                    ch = c.channel()
                    topology.delete(ch, self.conf)
                    ch.exchange_delete(self.exchange)
        if self.work is not None:
            if self.args.keep:
                log('kept %s' % self.work)
            else:
                shutil.rmtree(self.work, ignore_errors=True)


def sample(small, large, samples):
    """Alternating spawn calls on both agents, then alternating get_info
    calls; p50 (s) of each per agent. Spawned instances are destroyed
    again (untimed), so the counts stay as they were."""
    spawns = {small: [], large: []}
    infos = {small: [], large: []}
    made = {small: [], large: []}
    for i in range(samples):
        for agent in ((small, large) if i % 2 else (large, small)):
            took, inst = agent.timed_spawn()
            spawns[agent].append(took)
            made[agent].append(inst)
    for agent in (small, large):
        agent.settle()
    for i in range(samples * 3):
        for agent in ((small, large) if i % 2 else (large, small)):
            infos[agent].append(agent.timed_get_info())
    for agent in (small, large):
        for inst in made[agent]:
            agent.client.destroy(inst, timeout=60)
        agent.settle()
    return {agent: (statistics.median(spawns[agent]), statistics.median(infos[agent]))
            for agent in (small, large)}


def run(args, agents):
    small, large = Agent('s', args), Agent('l', args)
    agents += [small, large]
    for agent in agents:
        agent.start()
    for agent in agents:
        agent.wait_ready()
    for agent in agents:
        agent.settle()
    res = {'idle_mb': small.rss_mb()}
    log('idle RSS %.1f MB' % res['idle_mb'])
    small.fill(10)
    t0 = time.monotonic()
    large.fill(args.instances)
    log('filled to %d in %.0f s' % (args.instances, time.monotonic() - t0))
    for agent in agents:
        agent.settle()
    sample(small, large, 3)         # warm up: caches, first connections
    p50 = sample(small, large, args.samples)
    res['spawn10'], res['info10'] = p50[small]
    res['spawnN'], res['infoN'] = p50[large]
    res['rss_mb'] = large.rss_mb()
    res['rss10_mb'] = small.rss_mb()
    xml_path = os.path.join(small.work, 'floor-domain.xml')
    with open(xml_path, 'w') as f:
        f.write(small.domain_xml())
    res['floor0_mb'] = floor_mb(xml_path, 0)
    res['floorN_mb'] = floor_mb(xml_path, args.instances)
    res['stackN_mb'] = floor_mb(xml_path, args.instances, stack=True)
    return res


def report(res, n):
    rows = []

    def row(name, value, target, ok, fmt):
        rows.append(ok)
        print('  %-44s %12s   target %-9s %s' % (name, fmt % value, target,
                                                 'PASS' if ok else 'MISS'))

    print('agent on test:///default, %d vs 10 instances recorded:' % n)
    print('  %-44s %9.1f ms' % ('spawn call p50 at 10', res['spawn10'] * 1e3))
    print('  %-44s %9.1f ms' % ('spawn call p50 at %d' % n, res['spawnN'] * 1e3))
    r = res['spawnN'] / res['spawn10']
    row('spawn p50 ratio %d / 10' % n, r, '<= %.1fx' % TARGET_RATIO,
        r <= TARGET_RATIO, '%.2fx')
    print('  %-44s %9.2f ms' % ('get_info call p50 at 10', res['info10'] * 1e3))
    print('  %-44s %9.2f ms' % ('get_info call p50 at %d' % n, res['infoN'] * 1e3))
    r = res['infoN'] / res['info10']
    row('get_info p50 ratio %d / 10' % n, r, '<= %.1fx' % TARGET_RATIO,
        r <= TARGET_RATIO, '%.2fx')
    print('  %-44s %9.1f MB' % ('agent RSS with 10 instances', res['rss10_mb']))
    row('agent RSS with %d instances' % n, res['rss_mb'], '<= %d MB' % TARGET_RSS_MB,
        res['rss_mb'] <= TARGET_RSS_MB, '%.1f MB')
    row('agent RSS idle', res['idle_mb'], '<= %d MB' % TARGET_IDLE_MB,
        res['idle_mb'] <= TARGET_IDLE_MB, '%.1f MB')
    print('floor: python + oslo.config + kombu + libvirt on test:///default')
    print('  %-44s %9.1f MB   agent idle - floor %+.1f MB' % (
        'floor, no domain', res['floor0_mb'],
        res['idle_mb'] - res['floor0_mb']))
    print('  %-44s %9.1f MB   agent - floor %+.1f MB' % (
        'floor, %d domains (the agent\'s XML)' % n, res['floorN_mb'],
        res['rss_mb'] - res['floorN_mb']))
    print('  %-44s %9.1f MB   agent - floor %+.1f MB' % (
        '+ broker, oslo.log, sqlite3, domain.rng checks', res['stackN_mb'],
        res['rss_mb'] - res['stackN_mb']))
    return all(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--instances', type=int, default=1000)
    parser.add_argument('--samples', type=int, default=30)
    parser.add_argument('--parallel', type=int, default=8,
                        help='max_concurrent_builds while filling')
    parser.add_argument('--keep', action='store_true')
    args = parser.parse_args()

    def on_term(signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    agents = []
    try:
        res = run(args, agents)
    except KeyboardInterrupt:
        log('interrupted')
        return 130
    except Failed as e:
        log('FAILED: %s' % e)
        return 2
    finally:
        for agent in agents:
            agent.cleanup()
    return 0 if report(res, args.instances) else 1


if __name__ == '__main__':
    sys.exit(main())
