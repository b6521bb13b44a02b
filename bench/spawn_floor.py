"""bench/spawn.py's floor: the agent's spawn work done by hand, in the
benchmark process, one guest at a time or a burst of them at once."""

import os
import shutil
import subprocess
import threading
import time

from harness import Failed
from procstat import cpu_s
from procstat import libvirtd_pids

LIBVIRT_URI = 'qemu:///system'


class Floor:
    """Mixed into ``spawn.Bench``: needs its ``conf``, ``request``,
    ``conn``/``conn_lock``, ``start_cpu`` and ``floor_threads``."""

    def spawn_floor(self, name, t0=None, conn=None):
        """The floor: the agent's spawn work done directly, on ``conn``
        (default: the benchmark's connection). Returns (seconds from t0
        (default: the start of this call) to RUNNING, the domain, the
        instance dir); the guest is left running."""
        import libvirt

        from compute_agent.images.cache import ImageCache
        from compute_agent.virt import builder
        from compute_agent.virt import configdrive
        inst, meta = self.request(name)
        plan = builder.build(self.conf, inst, meta, [], None)
        xml = plan.domain.to_xml()     # not timed: the agent's XML
        cache = ImageCache(self.conf)
        base = {f.name: cache.path_for(f.image_id) for f in plan.files
                if f.image_id}
        d = plan.instance_dir
        if t0 is None:
            t0 = time.perf_counter()
        os.mkdir(d, 0o755)
        for f in plan.files:
            path = os.path.join(d, f.name)
            if f.kind == 'root':
                subprocess.run(
                    ['qemu-img', 'create', '-q', '-f', 'qcow2', '-b',
                     base[f.name], '-F', 'qcow2', path], check=True)
            elif f.kind == 'config':
                configdrive.build_config_drive(path, inst, [])
            else:                       # kernel, ramdisk
                os.link(base[f.name], path)
        dom = (conn or self.libvirt()).createXML(xml, 0)
        deadline = time.monotonic() + 60
        while dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            if time.monotonic() > deadline:
                raise Failed('floor guest %s not RUNNING within 60s'
                             % inst['name'])
            time.sleep(0.001)
        return time.perf_counter() - t0, dom, d

    def libvirt(self):
        """The benchmark's own libvirt connection, reopened if libvirtd
        restarted meanwhile."""
        import libvirt
        with self.conn_lock:
            try:
                alive = self.conn is not None and self.conn.isAlive() == 1
            except libvirt.libvirtError:
                alive = False
            if not alive:
                self.conn = libvirt.open(LIBVIRT_URI)
            return self.conn

    def destroy_floor(self, dom, d):
        import libvirt
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass
        shutil.rmtree(d, ignore_errors=True)

    def floor_once(self, name):
        """One floor spawn; also records the CPU libvirtd and the new QEMU
        spent to start the guest (nothing else runs meanwhile)."""
        lv0 = cpu_s(libvirtd_pids())
        elapsed, dom, d = self.spawn_floor(name)
        with open('/run/libvirt/qemu/%s.pid' % dom.name()) as f:
            qemu = int(f.read())
        self.start_cpu.append(cpu_s([qemu]) + cpu_s(libvirtd_pids()) - lv0)
        self.destroy_floor(dom, d)
        return elapsed

    def floor_burst(self, count):
        """``count`` floor spawns at once, one thread and one libvirt
        connection each (libvirtd runs at most 5 calls of one connection at
        a time); seconds from the start to each one RUNNING."""
        import libvirt
        results, errors = [None] * count, []
        conns = [libvirt.open(LIBVIRT_URI) for _ in range(count)]
        t0 = time.perf_counter()

        def one(i):
            try:
                results[i] = self.spawn_floor('fc%d' % i, t0, conns[i])
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        threads = [threading.Thread(target=one, args=(i,), daemon=True)
                   for i in range(count)]
        self.floor_threads = threads
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            if r is not None:
                self.destroy_floor(*r[1:])
        for c in conns:
            c.close()
        if errors:
            raise Failed('floor burst: %s' % errors[0])
        return sorted(r[0] for r in results)
