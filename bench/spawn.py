"""Benchmark: spawn latency of the agent vs doing the same work by hand.

Not a test. Needs root, RabbitMQ on localhost:5672 and libvirtd
(tools/start-services.sh) and the tiny test guest (built on demand by
tools/build-test-guest.sh into $CA_TEST_CACHE/guest). Guests run as domain
type ``qemu`` (TCG). In one run, against baselines measured in the same run:

  agent      cast -> ``spawn.end`` report with vm_state active, through a
             real ``compute-agent`` subprocess on the local broker (its own
             host, topic, exchange and state topic), of the test guest
             (kernel + ramdisk boot, qcow2 root overlay, config drive) with
             every image already in the agent's cache; --n sequential
             spawns, each destroyed afterwards (not timed): p50/p95.
  floor      the same work without the agent, in this process: ``qemu-img
             create -f qcow2 -b <cached base> -F qcow2``, the config drive
             (compute_agent.virt.configdrive.build_config_drive), hardlinks
             of the cached kernel/ramdisk, ``createXML`` of the domain XML
             the agent produces (compute_agent.virt.builder.build with the
             agent's own config file and the same request), then waiting
             for RUNNING: p50/p95. Agent and floor runs alternate, so load
             from elsewhere on the machine hits both alike.
  ratio      agent p50 / floor p50 (target <= 1.03).
  fsyncs     fsync/fdatasync calls on the agent's journal during one spawn
             call (its record + report commits and the outcome + reply
             commit), counted by ``strace -f -y`` attached to the agent
             after the timed runs (target <= 3; before the outbox and the
             records shared commits it was 5).
  burst      wall time from casting --concurrent spawns at once to the
             last ``spawn.end`` report (max_concurrent_builds >= that),
             vs one spawn's p50 (target <= 3x); beside it the same burst
             by hand (the floor's work in --concurrent threads, one
             libvirt connection each). --bursts of each, alternating, the
             median counts.
  bound      CPU seconds libvirtd and the new QEMU spend to start one guest
             (around the floor's sequential starts) x --concurrent / CPUs:
             no agent's burst can be shorter on this host.
  fetches    --concurrent concurrent spawns of one image the agent has not
             cached (a copy of the root image under a fresh id): GETs of it
             counted by the image store, an http.server on 127.0.0.1 in this
             process ([images] image_store_url points at it). Target: 1.

Everything it makes (domains, directories, queues and exchanges, the agent
process, the HTTP server) is removed at the end, also on Ctrl-C.

    .venv/bin/python bench/spawn.py [--n 10] [--concurrent 10] [--bursts 2]
                                    [--breakdown] [--keep-logs] [--agent-debug]

--breakdown runs the agent with wall-clock timers around the steps of its
spawn path (builder, RelaxNG, journal, qemu-img, config drive, defineXML,
create, ...) and prints where a sequential spawn's time goes. Exit status:
0 every target met, 1 a target missed, 2 the run failed, 130 interrupted.
"""

import argparse
import functools
import glob
import hashlib
import http.server
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import spawn_breakdown
from harness import Failed
from spawn_floor import LIBVIRT_URI
from spawn_floor import Floor
from spawn_report import report
from procstat import libvirtd_pids

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

URL = 'rabbit://guest:guest@localhost:5672/'
WORK_ROOT = os.environ.get('CA_BENCH_WORKDIR', '/var/lib/compute-agent-bench')
CACHE = os.environ.get('CA_TEST_CACHE', '/var/tmp/compute-agent-test-cache')
AGENT = os.path.join(REPO, '.venv', 'bin', 'compute-agent')
QEMU_LOG_DIR = '/var/log/libvirt/qemu'

REPORT_TIMEOUT = 180


# ------------------------------------------------------------ image store

class Store:
    """The image store: a directory served by http.server, counting GETs."""

    def __init__(self, directory):
        self.directory = directory
        self.gets = {}
        self._lock = threading.Lock()
        store = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                with store._lock:
                    store.gets[self.path] = store.gets.get(self.path, 0) + 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(
            ('127.0.0.1', 0),
            functools.partial(Handler, directory=directory))
        self.server.daemon_threads = True
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       name='image-store', daemon=True)
        self.thread.start()

    def count(self, image_id):
        with self._lock:
            return self.gets.get('/' + image_id, 0)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ bench

class Bench(Floor):

    def __init__(self, args):
        self.args = args
        self.suffix = uuid.uuid4().hex[:8]
        self.prefix = 'bs-%s-' % self.suffix
        self.host = 'bench-spawn-' + self.suffix
        self.topic = 'bench-spawn-' + self.suffix
        self.exchange = 'bench-spawn-' + self.suffix
        self.state_topic = 'bench-state-' + self.suffix
        self.work = None
        self.store = None
        self.agent = None
        self.agent_log = None
        self.client = None
        self.watcher = None
        self.conn = None
        self.conf = None
        self.events = {}        # uuid -> [(t, args)]
        self.guest = None
        self.floor_threads = []
        self.made_root = False
        self.conn_lock = threading.Lock()
        self.libvirtd_pids = None
        self.agent_cpu = []     # agent CPU seconds (own + children) per spawn
        self.start_cpu = []     # libvirtd + QEMU CPU seconds per floor start
        self.timings = None     # --breakdown: the timed agent's output
        self.timed_calls = None
        self.window = None      # time.time() span of the sequential spawns
        self.burst_windows = []  # (first cast, last active) of agent bursts

    # ---------------------------------------------------------- setup

    def setup(self):
        if os.geteuid() != 0:
            raise Failed('run as root (libvirt qemu:///system, /var/lib)')
        out = subprocess.run(
            [os.path.join(REPO, 'tools', 'build-test-guest.sh'),
             os.path.join(CACHE, 'guest')],
            capture_output=True, text=True, check=False)
        if out.returncode:
            raise Failed('build-test-guest.sh failed:\n' + out.stdout
                         + out.stderr)
        self.guest = os.path.join(CACHE, 'guest')
        self.made_root = not os.path.isdir(WORK_ROOT)
        os.makedirs(WORK_ROOT, exist_ok=True)
        os.chmod(WORK_ROOT, 0o755)
        self.work = tempfile.mkdtemp(prefix='run-', dir=WORK_ROOT)
        os.chmod(self.work, 0o755)      # QEMU must traverse it
        images = os.path.join(self.work, 'images')
        os.mkdir(images)
        shutil.copy(os.path.join(self.guest, 'vmlinuz'),
                    os.path.join(images, 'bench-kernel'))
        shutil.copy(os.path.join(self.guest, 'initrd.img'),
                    os.path.join(images, 'bench-ramdisk'))
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2',
                        os.path.join(images, 'bench-root'), '64M'],
                       check=True)
        self.store = Store(images)
        conf_path = os.path.join(self.work, 'agent.conf')
        with open(conf_path, 'w') as f:
            f.write(f"""[DEFAULT]
host = {self.host}
state_path = {self.work}/state
instances_path = {self.work}/instances
transport_url = {URL}
control_exchange = {self.exchange}
max_concurrent_builds = {max(10, self.args.concurrent)}
graceful_shutdown_timeout = 10
[rpc]
topic = {self.topic}
state_topic = {self.state_topic}
[libvirt]
virt_type = qemu
[images]
image_store_url = {self.store.url}
[vnc]
enabled = true
server_listen = 127.0.0.1
""")
        from oslo_config import cfg

        from compute_agent import conf as agent_conf
        self.conf = agent_conf.register_all(cfg.ConfigOpts())
        self.conf(['--config-file', conf_path], project='compute-agent',
                  default_config_files=[], default_config_dirs=[])
        os.makedirs(self.conf.instances_path, mode=0o755)
        os.chmod(self.conf.instances_path, 0o755)

        self.agent_log = os.path.join(self.work, 'agent.log')
        argv = [AGENT, '--config-file', conf_path, '--log-file',
                self.agent_log]
        if self.args.agent_debug:
            argv.append('--debug')
        env = dict(os.environ)
        if self.args.breakdown:
            self.timings = os.path.join(self.work, 'timings.json')
            env['CA_BENCH_TIMINGS'] = self.timings
            argv = [sys.executable, spawn_breakdown.__file__] + argv[1:]
        # Own session: a Ctrl-C on the terminal reaches only this process,
        # which then stops the agent itself.
        self.agent = subprocess.Popen(argv, start_new_session=True, env=env,
                                      stdin=subprocess.DEVNULL)

        import libvirt

        from compute_agent.rpc.client import AgentClient
        libvirt.registerErrorHandler(lambda _c, _e: None, None)
        self.conn = libvirt.open(LIBVIRT_URI)
        self.client = AgentClient(URL, self.host, topic=self.topic,
                                  exchange=self.exchange, timeout=10,
                                  state_topic=self.state_topic)
        deadline = time.monotonic() + 60
        while True:
            if self.agent.poll() is not None:
                raise Failed('the agent exited (%s); see %s'
                             % (self.agent.returncode, self.agent_log))
            try:
                self.client.ping(timeout=2)
                break
            except Exception:   # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise Failed('the agent does not answer ping; see %s'
                                 % self.agent_log) from None
                time.sleep(0.2)
        self.watcher = self.client.open_watch()
        self.libvirtd_pids = libvirtd_pids()

    # ------------------------------------------------------ requests

    def request(self, name, image_id='bench-root'):
        u = str(uuid.uuid4())
        instance = {'uuid': u, 'name': self.prefix + name,
                    'image_ref': image_id, 'kernel_id': 'bench-kernel',
                    'ramdisk_id': 'bench-ramdisk', 'config_drive': True,
                    'hostname': self.prefix + name,
                    'flavor': {'memory_mb': 128, 'vcpus': 1, 'root_gb': 1}}
        return instance, {'id': image_id, 'disk_format': 'qcow2'}

    def _pump(self, timeout):
        ev = self.watcher.get(timeout=timeout)
        if ev is None:
            return
        method, args, _ctx = ev
        if method == 'instance_state_changed':
            self.events.setdefault(args.get('instance_uuid'), []).append(
                (time.perf_counter(), args))

    def wait_event(self, uuids, event, vm_state, timeout=REPORT_TIMEOUT):
        """Arrival time of ``event`` (with ``vm_state``) per uuid."""
        deadline = time.monotonic() + timeout
        got = {}
        while True:
            for u in uuids:
                if u in got:
                    continue
                for t, a in self.events.get(u, ()):
                    if a['event'] == event and a['vm_state'] == vm_state:
                        got[u] = t
                        break
                    if a['event'].endswith('.error'):
                        raise Failed('%s of %s failed: %s' % (
                            event, u, json.dumps(a.get('error'))))
            if len(got) == len(uuids):
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed('no %s report for %d of %d instances within '
                             '%ss; see %s' % (event, len(uuids) - len(got),
                                              len(uuids), timeout,
                                              self.agent_log))
            self._pump(min(left, 1.0))

    def spawn_agent(self, instances):
        """Cast every spawn at once; seconds from the first cast to each
        instance's spawn.end (active) report."""
        for inst, _ in instances:
            self.events.pop(inst['uuid'], None)
        t0 = time.perf_counter()
        for inst, meta in instances:
            self.client.spawn(inst, meta, cast=True)
        got = self.wait_event([i['uuid'] for i, _ in instances],
                              'spawn.end', 'active')
        return {u: t - t0 for u, t in got.items()}

    def destroy_agent(self, instances):
        for inst, _ in instances:
            self.client.destroy(inst, cast=True)
        self.wait_event([i['uuid'] for i, _ in instances], 'destroy.end',
                        'deleted')
        for inst, _ in instances:
            self.events.pop(inst['uuid'], None)

    def count_fsyncs(self):
        """fsync/fdatasync calls on the journal during one spawn call (the
        reply is written with the outcome, so when it arrives every commit
        of the spawn is done); None without strace."""
        strace = shutil.which('strace')
        if strace is None:
            return None
        out = os.path.join(self.work, 'strace.txt')
        tracer = subprocess.Popen(
            [strace, '-f', '-qq', '-y', '-e', 'trace=fsync,fdatasync', '-o',
             out, '-p', str(self.agent.pid)], stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)    # attached to every thread
            self.client.ping(timeout=10)
            inst, meta = self.request('sync')
            self.client.spawn(inst, meta, timeout=REPORT_TIMEOUT)
        finally:
            tracer.send_signal(signal.SIGINT)    # detaches
            tracer.wait(30)
        self.destroy_agent([(inst, meta)])
        with open(out) as f:
            return sum(1 for line in f if 'journal.sqlite' in line)

    # -------------------------------------------------------- the run

    def run(self):
        a = self.args
        res = {}
        # Warm-up (not timed): fills the agent's image cache, loads its
        # schema, opens its libvirt connection.
        warm = [self.request('warm')]
        self.spawn_agent(warm)
        self.destroy_agent(warm)
        self.floor_once('warmfloor')
        log('warm-up done; cache: %s' % sorted(self.store.gets.items()))

        agent_t, floor_t = [], []
        w0 = time.time()
        for i in range(a.n):
            order = ('agent', 'floor') if i % 2 == 0 else ('floor', 'agent')
            for which in order:
                if which == 'agent':
                    req = [self.request('a%d' % i)]
                    cpu0 = self.agent_cpu_s()
                    agent_t.append(self.spawn_agent(req)[req[0][0]['uuid']])
                    self.agent_cpu.append(self.agent_cpu_s() - cpu0)
                    self.destroy_agent(req)
                else:
                    floor_t.append(self.floor_once('f%d' % i))
            log('spawn %d/%d: agent %.0f ms, floor %.0f ms' % (
                i + 1, a.n, agent_t[-1] * 1000, floor_t[-1] * 1000))
        self.window = (w0, time.time())
        res['agent'] = agent_t
        res['floor'] = floor_t
        res['agent_cpu'] = self.agent_cpu
        res['start_cpu'] = self.start_cpu[1:]       # without the warm-up

        # Bursts: agent and floor alternate (ABBA...), medians reported.
        res['bursts'], res['floor_bursts'] = [], []
        for r in range(a.bursts):
            order = ('agent', 'floor') if r % 2 == 0 else ('floor', 'agent')
            for which in order:
                if which == 'agent':
                    reqs = [self.request('c%d-%d' % (r, i))
                            for i in range(a.concurrent)]
                    w0 = time.time()
                    each = sorted(self.spawn_agent(reqs).values())
                    self.burst_windows.append((w0, w0 + each[-1]))
                    res['bursts'].append(each)
                    self.destroy_agent(reqs)
                else:
                    res['floor_bursts'].append(
                        self.floor_burst(a.concurrent))
                log('%s burst of %d: last running/active after %.0f ms' % (
                    which, a.concurrent, (res['bursts'] if which == 'agent'
                                          else res['floor_bursts'])[-1][-1]
                    * 1000))
        res['burst'] = statistics.median(b[-1] for b in res['bursts'])
        res['floor_burst'] = statistics.median(
            b[-1] for b in res['floor_bursts'])

        fresh = 'bench-root-fresh-' + self.suffix
        shutil.copy(os.path.join(self.store.directory, 'bench-root'),
                    os.path.join(self.store.directory, fresh))
        before = self.store.count(fresh)
        reqs = [self.request('u%d' % i, fresh) for i in range(a.concurrent)]
        times = self.spawn_agent(reqs)
        res['fetches'] = self.store.count(fresh) - before
        res['uncached_burst'] = max(times.values())
        name = hashlib.sha1(fresh.encode()).hexdigest()
        base = os.path.join(self.conf.instances_path, '_base')
        res['base_files'] = sorted(f for f in os.listdir(base)
                                   if f.startswith(name)
                                   or f.startswith('.' + name))
        log('uncached burst of %d: %d GETs, last active after %.0f ms' % (
            a.concurrent, res['fetches'], res['uncached_burst'] * 1000))
        self.destroy_agent(reqs)
        res['fsyncs'] = self.count_fsyncs()
        log('journal fsyncs of one spawn call: %s' % res['fsyncs'])
        res['notes'] = []
        if libvirtd_pids() != self.libvirtd_pids:
            res['notes'].append('libvirtd restarted during the run (pids %s '
                                '-> %s): numbers are unreliable' % (
                                    self.libvirtd_pids, libvirtd_pids()))
        return res

    def agent_cpu_s(self):
        """CPU seconds of the agent process and its waited-for children
        (qemu-img)."""
        with open('/proc/%d/stat' % self.agent.pid) as f:
            v = f.read().rsplit(')', 1)[1].split()
        return sum(int(x) for x in v[11:15]) / os.sysconf('SC_CLK_TCK')

    # ------------------------------------------------------- cleanup

    def cleanup(self):
        import contextlib
        ign = contextlib.suppress(Exception)
        for t in self.floor_threads:    # interrupted mid-burst: let them end
            t.join(120)
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        for closer in (self.watcher, self.client):
            if closer is not None:
                with ign:
                    closer.close()
        if self.conn is not None:
            import libvirt
            with ign:
                self.conn.close()
            with ign:
                self.conn = libvirt.open(LIBVIRT_URI)
                for dom in self.conn.listAllDomains(0):
                    if dom.name().startswith(self.prefix):
                        with ign:
                            if dom.isActive():
                                dom.destroy()
                        with ign:
                            if dom.isPersistent():
                                dom.undefineFlags(
                                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            with ign:
                self.conn.close()
        # libvirt's per-domain logs of our guests (their names are ours).
        for path in glob.glob(os.path.join(QEMU_LOG_DIR,
                                           glob.escape(self.prefix) + '*')):
            with ign:
                os.unlink(path)
        if self.conf is not None:
            with ign:
                import kombu

                from compute_agent.rpc import topology
                with kombu.Connection(URL.replace('rabbit://', 'amqp://')) \
                        as c:
                    ch = c.channel()
                    topology.delete(ch, self.conf)
                    ch.exchange_delete(self.exchange)
        if self.timings and os.path.exists(self.timings):
            with ign:       # written by the timed agent as it exited
                with open(self.timings) as f:
                    self.timed_calls = json.load(f)
        if self.store is not None:
            with ign:
                self.store.close()
        if self.work is not None:
            if self.args.keep_logs and self.agent_log and os.path.exists(
                    self.agent_log):
                kept = os.path.join(WORK_ROOT, 'agent-%s.log' % self.suffix)
                shutil.copy(self.agent_log, kept)
                log('agent log kept in %s' % kept)
            shutil.rmtree(self.work, ignore_errors=True)
            if self.made_root:
                with ign:   # unless a log is kept there
                    os.rmdir(WORK_ROOT)


def log(msg):
    print('bench/spawn: %s' % msg, file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n', type=int, default=10,
                        help='sequential spawns of each kind (default 10)')
    parser.add_argument('--concurrent', type=int, default=10,
                        help='spawns cast at once (default 10)')
    parser.add_argument('--bursts', type=int, default=2,
                        help='concurrent bursts of each kind, alternating '
                             'agent/floor; the median counts (default 2)')
    parser.add_argument('--agent-debug', action='store_true',
                        help='run the agent with --debug')
    parser.add_argument('--keep-logs', action='store_true',
                        help='keep the agent log in %s' % WORK_ROOT)
    parser.add_argument('--breakdown', action='store_true',
                        help='time the steps of the agent\'s spawn path '
                             '(wrappers in the agent process) and print '
                             'where the time of a sequential spawn goes')
    args = parser.parse_args()
    if min(args.n, args.concurrent, args.bursts) < 1:
        parser.error('--n, --concurrent and --bursts must be >= 1')
    bench = Bench(args)

    def on_term(signum, _frame):
        raise KeyboardInterrupt
    # Explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    try:
        bench.setup()
        res = bench.run()
    except KeyboardInterrupt:
        log('interrupted; cleaning up')
        return 130
    except Failed as e:
        log('FAILED: %s' % e)
        args.keep_logs = True
        return 2
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            # clean up in peace
            signal.signal(sig, signal.SIG_IGN)
        bench.cleanup()
    ok = report(res, args)
    if bench.timed_calls is not None and bench.window is not None:
        print()
        spawn_breakdown.breakdown(bench.timed_calls, bench.window,
                                  len(res['agent']), res['agent'],
                                  res['floor'])
        for w in bench.burst_windows[:1]:
            print()
            spawn_breakdown.timeline(bench.timed_calls, w)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
