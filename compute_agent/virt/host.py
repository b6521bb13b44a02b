"""The host record (docs: protocol-host-report; ``host_state_update`` args)."""

import os

import libvirt

GiB = 1024 ** 3


def host_stats(conn, instances_path):
    """Capacity and use of this host, from libvirt and ``instances_path``'s fs."""
    info = conn.getInfo()    # [model, memory MiB, cpus, mhz, ...]
    try:
        mem = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
    except libvirt.libvirtError:     # not every driver has it (test:///)
        mem = {}
    # getInfo's memory comes from the NUMA nodes and can be far below
    # /proc/meminfo's MemTotal, which the node memory stats report.
    total_kib = mem.get('total') or info[1] * 1024
    free_kib = sum(mem.get(k, 0) for k in ('free', 'buffers', 'cached'))
    active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    vcpus_used = 0
    for dom in active:
        try:
            vcpus_used += dom.info()[3]
        except libvirt.libvirtError:
            pass          # stopped meanwhile
    st = os.statvfs(_existing_parent(instances_path))
    return {
        'hypervisor_type': conn.getType(),
        'hypervisor_version': conn.getVersion(),
        'vcpus': info[2],
        'vcpus_used': vcpus_used,
        'memory_mb': total_kib // 1024,
        'memory_mb_used': max(0, total_kib - free_kib) // 1024,
        'local_gb': st.f_frsize * st.f_blocks // GiB,
        'local_gb_used': st.f_frsize * (st.f_blocks - st.f_bfree) // GiB,
        'running_vms': len(active),
    }


def _existing_parent(path):
    """instances_path may not exist before the first spawn: stat its parent."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path
