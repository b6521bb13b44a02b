"""Benchmark: how the agent scales with the number of instances it records.

Not a test. Needs RabbitMQ on localhost:5672 and ``qemu-img``; no libvirtd:
the agent runs on libvirt's in-process mock hypervisor (``[libvirt]
connection_uri = test:///default``, ``virt_type = qemu``), so what is
measured is the agent itself (RPC, journal, builder, disks), not QEMU.

It starts a real ``compute-agent`` (its own host, topic, exchange and state
topic on the shared broker, its work directory under ``$CA_BENCH_WORKDIR``,
default ``/var/tmp/compute-agent-bench``) and, in one run:

  idle RSS   VmRSS of the agent once it answers ping and has settled
             (target <= 60 MB);
  at 10      with 10 instances recorded: --samples sequential spawn calls
             (each of a new instance, destroyed again untimed) and
             --samples get_info calls of recorded instances: p50 of each;
  at 1000    the same with --instances (default 1,000) recorded (filled by
             casts, --parallel at a time);
  ratio      p50 at 1000 / p50 at 10, spawn and get_info (target <= 1.2);
  RSS        VmRSS of the agent with 1,000 instances (target <= 80 MB).

Instances are kvm-style guests of 64 MiB with a qcow2 overlay root disk of a
1 MiB image from a file:// image store, no VIFs, no config drive. Note that
``test:///default`` keeps its domains in the agent's own memory (about 10 kB
each), which is in the RSS.

    .venv/bin/python bench/scale.py [--instances 1000] [--samples 30]
                                    [--parallel 8] [--keep]

Exit status: 0 every target met, 1 a target missed, 2 the run failed.
Everything it makes (the agent, queues, exchanges, the work directory) is
removed at the end, also on Ctrl-C (--keep keeps the directory and log).
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
WORK_ROOT = os.environ.get('CA_BENCH_WORKDIR', '/var/tmp/compute-agent-bench')
AGENT = os.path.join(REPO, '.venv', 'bin', 'compute-agent')
MB = 1024 * 1024

TARGET_RATIO = 1.2
TARGET_RSS_MB = 80
TARGET_IDLE_MB = 60


class Failed(Exception):
    pass


def log(msg):
    print('bench/scale: %s' % msg, file=sys.stderr, flush=True)


def rss_mb(pid):
    """VmRSS of ``pid`` in MB (from /proc/<pid>/status)."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024 / MB
    raise Failed('no VmRSS for pid %d' % pid)


class Bench:

    def __init__(self, args):
        self.args = args
        self.suffix = uuid.uuid4().hex[:8]
        self.prefix = 'sc-%s-' % self.suffix
        self.host = 'bench-scale-' + self.suffix
        self.topic = 'bench-scale-' + self.suffix
        self.exchange = 'bench-scale-' + self.suffix
        self.state_topic = 'bench-scale-state-' + self.suffix
        self.work = self.agent = self.client = self.conf = None
        self.log_path = None
        self.recorded = []          # instances that stay
        self.n = 0

    # ------------------------------------------------------------- setup

    def setup(self):
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
        self.agent = subprocess.Popen(
            [AGENT, '--config-file', conf_path, '--log-file', self.log_path],
            start_new_session=True, stdin=subprocess.DEVNULL)

        from compute_agent.rpc.client import AgentClient
        self.client = AgentClient(URL, self.host, topic=self.topic,
                                  exchange=self.exchange, timeout=60,
                                  state_topic=self.state_topic)
        deadline = time.monotonic() + 60
        while True:
            if self.agent.poll() is not None:
                raise Failed('the agent exited (%s); see %s'
                             % (self.agent.returncode, self.log_path))
            try:
                self.client.ping(timeout=2)
                return
            except Exception:   # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise Failed('the agent does not answer ping; see %s'
                                 % self.log_path) from None
                time.sleep(0.2)

    # ---------------------------------------------------------- requests

    def instance(self):
        self.n += 1
        return {'uuid': str(uuid.uuid4()), 'name': '%s%d' % (self.prefix, self.n),
                'image_ref': 'scale-root',
                'flavor': {'memory_mb': 64, 'vcpus': 1, 'root_gb': 0}}

    IMAGE_META = {'id': 'scale-root', 'disk_format': 'qcow2'}

    def fill(self, count):
        """Spawn by casts until ``count`` instances are recorded."""
        todo = count - len(self.recorded)
        batch = []
        for _ in range(todo):
            inst = self.instance()
            self.client.spawn(inst, self.IMAGE_META, cast=True)
            batch.append(inst)
        deadline = time.monotonic() + 60 + todo * 0.5
        while True:
            records = self.client.list_instances(timeout=120)
            mine = {r['uuid']: r for r in records}
            bad = [r for r in records if r['vm_state'] == 'error']
            if bad:
                raise Failed('spawn failed: %s' % bad[0].get('error'))
            if all(mine.get(i['uuid'], {}).get('vm_state') == 'active'
                   for i in batch):
                break
            if time.monotonic() > deadline:
                raise Failed('%d instances recorded, %d expected; see %s'
                             % (len(records), count, self.log_path))
            time.sleep(1)
        self.recorded += batch

    def sample(self):
        """p50 (s) of spawn calls and of get_info calls, at this count."""
        spawns, infos, made = [], [], []
        for _ in range(self.args.samples):
            inst = self.instance()
            t0 = time.perf_counter()
            rec = self.client.spawn(inst, self.IMAGE_META, timeout=60)
            spawns.append(time.perf_counter() - t0)
            if rec['vm_state'] != 'active':
                raise Failed('spawn ended %s: %s' % (rec['vm_state'], rec['error']))
            made.append(inst)
            u = random.choice(self.recorded)['uuid']
            t0 = time.perf_counter()
            self.client.get_info(u, timeout=60)
            infos.append(time.perf_counter() - t0)
        for inst in made:       # back to the count measured
            self.client.destroy(inst, timeout=60)
        return statistics.median(spawns), statistics.median(infos)

    def settle(self, seconds=3):
        time.sleep(seconds)

    # ------------------------------------------------------------- run

    def run(self):
        self.setup()
        self.settle()
        res = {'idle_mb': rss_mb(self.agent.pid)}
        log('idle RSS %.1f MB' % res['idle_mb'])
        self.fill(10)
        self.sample()                   # warm up: caches, first connections
        res['spawn10'], res['info10'] = self.sample()
        log('at 10: spawn p50 %.1f ms, get_info p50 %.2f ms'
            % (res['spawn10'] * 1e3, res['info10'] * 1e3))
        t0 = time.monotonic()
        self.fill(self.args.instances)
        log('filled to %d in %.0f s' % (self.args.instances, time.monotonic() - t0))
        self.settle()
        res['spawnN'], res['infoN'] = self.sample()
        self.settle()
        res['rss_mb'] = rss_mb(self.agent.pid)
        log('at %d: spawn p50 %.1f ms, get_info p50 %.2f ms, RSS %.1f MB'
            % (self.args.instances, res['spawnN'] * 1e3, res['infoN'] * 1e3,
               res['rss_mb']))
        return res

    # ---------------------------------------------------------- cleanup

    def cleanup(self):
        import contextlib
        ign = contextlib.suppress(Exception)
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        if self.client is not None:
            with ign:
                self.client.close()
        if self.conf is not None:
            with ign:
                import kombu

                from compute_agent.rpc import topology
                with kombu.Connection(URL.replace('rabbit://', 'amqp://')) as c:
                    ch = c.channel()
                    topology.delete(ch, self.conf)
                    ch.exchange_delete(self.exchange)
        if self.work is not None:
            if self.args.keep:
                log('kept %s' % self.work)
            else:
                shutil.rmtree(self.work, ignore_errors=True)


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
    row('agent RSS with %d instances' % n, res['rss_mb'], '<= %d MB' % TARGET_RSS_MB,
        res['rss_mb'] <= TARGET_RSS_MB, '%.1f MB')
    row('agent RSS idle', res['idle_mb'], '<= %d MB' % TARGET_IDLE_MB,
        res['idle_mb'] <= TARGET_IDLE_MB, '%.1f MB')
    return all(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--instances', type=int, default=1000)
    parser.add_argument('--samples', type=int, default=30)
    parser.add_argument('--parallel', type=int, default=8,
                        help='max_concurrent_builds while filling')
    parser.add_argument('--keep', action='store_true')
    args = parser.parse_args()
    bench = Bench(args)

    def on_term(signum, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        res = bench.run()
    except KeyboardInterrupt:
        log('interrupted')
        return 130
    except Failed as e:
        log('FAILED: %s' % e)
        return 2
    finally:
        bench.cleanup()
    return 0 if report(res, args.instances) else 1


if __name__ == '__main__':
    sys.exit(main())
