#!/bin/bash
# Start the services compute-agent needs on a host without systemd as PID 1:
# RabbitMQ, virtlogd, libvirtd (under tini) and Open vSwitch (userspace).
# Idempotent: a service that already answers is left alone.  Exits non-zero
# with a message naming the service that did not come up.
#
# Environment:
#   CA_SERVICES_LOG_DIR  where daemon output goes (default /var/log/compute-agent-services)
#   CA_SERVICES_STATE_DIR markers of what this script started, read by
#                         stop-services.sh (default /run/compute-agent-services)
set -euo pipefail

LOG_DIR=${CA_SERVICES_LOG_DIR:-/var/log/compute-agent-services}
STATE_DIR=${CA_SERVICES_STATE_DIR:-/run/compute-agent-services}
LIBVIRT_URI=qemu:///system

log() { echo "start-services: $*"; }
die() { echo "start-services: ERROR: $*" >&2; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root"
fi
mkdir -p "$LOG_DIR" "$STATE_DIR"
# Serialise concurrent runs (and runs of stop-services.sh).  Daemons are
# started with 9>&- so that they do not inherit (and hold) the lock.
exec 9>"$STATE_DIR/lock"
flock 9

# wait_for SECONDS DESCRIPTION CMD...: retry CMD every 0.5 s until it
# succeeds or SECONDS have passed.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$(( $(date +%s) + timeout ))
    until "$@" >/dev/null 2>&1; do
        if (( $(date +%s) >= deadline )); then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
    return 0
}

port_open() {  # port_open HOST PORT
    timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# --------------------------------------------------------------- RabbitMQ
rabbit_ready() {
    port_open 127.0.0.1 5672 && timeout 20 rabbitmqctl -q status >/dev/null 2>&1
}

start_rabbitmq() {
    if port_open 127.0.0.1 5672; then
        log "RabbitMQ already listening on 5672"
        return 0
    fi
    if pgrep -u rabbitmq -x beam.smp >/dev/null; then
        # A node that is still booting, or still shutting down.
        log "a RabbitMQ node is running but not listening; waiting for it"
        local deadline=$(( $(date +%s) + 60 ))
        while pgrep -u rabbitmq -x beam.smp >/dev/null && (( $(date +%s) < deadline )); do
            if rabbit_ready; then
                log "RabbitMQ ready"
                return 0
            fi
            sleep 0.5
        done
        if pgrep -u rabbitmq -x beam.smp >/dev/null; then
            die "a RabbitMQ node is running but not answering on 5672 after 60s"
        fi
    fi
    log "starting RabbitMQ"
    # The Debian wrapper drops privileges to the rabbitmq user itself.
    rabbitmq-server -detached >>"$LOG_DIR/rabbitmq-server.log" 2>&1 9>&- ||
        die "rabbitmq-server -detached failed, see $LOG_DIR/rabbitmq-server.log"
    touch "$STATE_DIR/rabbitmq"
    if ! wait_for 60 RabbitMQ rabbit_ready; then
        die "RabbitMQ did not become ready within 60s (see $LOG_DIR/rabbitmq-server.log and /var/log/rabbitmq/)"
    fi
    log "RabbitMQ ready"
}

# ------------------------------------------------------------------ /dev/kvm
fix_kvm_perms() {
    if [[ -e /dev/kvm ]]; then
        # libvirt runs QEMU as libvirt-qemu (group kvm); with the default
        # 0600 root:root every libvirt call stalls ~50 s probing QEMU.
        if getent group kvm >/dev/null; then
            chgrp kvm /dev/kvm
        fi
        chmod 0660 /dev/kvm
        log "/dev/kvm: $(stat -c '%A %U:%G' /dev/kvm)"
    else
        log "/dev/kvm does not exist (TCG only)"
    fi
}

# ------------------------------------------------------------------ libvirt
pid_alive() {  # pid_alive PIDFILE
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

start_virtlogd() {
    if pid_alive /run/virtlogd.pid || pgrep -x virtlogd >/dev/null; then
        log "virtlogd already running"
        return 0
    fi
    log "starting virtlogd"
    virtlogd -d 9>&- || die "virtlogd -d failed"
    touch "$STATE_DIR/virtlogd"
    wait_for 10 virtlogd test -S /run/libvirt/virtlogd-sock ||
        die "virtlogd did not create /run/libvirt/virtlogd-sock within 10s"
}

libvirt_ready() {
    timeout 10 virsh -c "$LIBVIRT_URI" list >/dev/null 2>&1
}

start_libvirtd() {
    if libvirt_ready; then
        log "libvirtd already answering on $LIBVIRT_URI"
        return 0
    fi
    if pgrep -x libvirtd >/dev/null; then
        log "libvirtd process exists but does not answer yet; waiting"
        wait_for 60 libvirtd libvirt_ready ||
            die "an existing libvirtd does not answer on $LIBVIRT_URI"
        return 0
    fi
    log "starting libvirtd under tini"
    # tini -s reaps exited QEMU processes promptly (PID 1 here is slow at it,
    # which makes every destroy take ~1.7 s).  setsid detaches it from our
    # session so it survives this script.
    setsid tini -s -- libvirtd </dev/null >>"$LOG_DIR/libvirtd.log" 2>&1 9>&- &
    echo $! >"$STATE_DIR/libvirtd.tini.pid"
    touch "$STATE_DIR/libvirtd"
    if ! wait_for 60 libvirtd libvirt_ready; then
        tail -n 20 "$LOG_DIR/libvirtd.log" >&2 || true
        die "libvirtd did not answer on $LIBVIRT_URI within 60s (see $LOG_DIR/libvirtd.log)"
    fi
    log "libvirtd ready"
}

# ------------------------------------------------------------- Open vSwitch
OVS_DB=/etc/openvswitch/conf.db
OVS_SCHEMA=/usr/share/openvswitch/vswitch.ovsschema
OVS_RUN=/run/openvswitch

ovs_db_ready() {
    timeout 5 ovs-vsctl --no-wait --timeout=3 show >/dev/null 2>&1
}

ovs_ready() {
    timeout 5 ovs-vsctl --timeout=3 show >/dev/null 2>&1 &&
        timeout 5 ovs-appctl --timeout=3 -t ovs-vswitchd version >/dev/null 2>&1
}

start_ovs() {
    if ovs_ready; then
        log "Open vSwitch already running"
        return 0
    fi
    mkdir -p "$OVS_RUN" /var/log/openvswitch
    if ! ovs_db_ready; then
        # conf.db is a symlink into /var/lib/openvswitch on Debian; -e
        # follows it, and ovsdb-tool creates the target.
        if [[ ! -e "$OVS_DB" ]]; then
            log "creating OVS database $OVS_DB"
            mkdir -p "$(dirname "$(readlink -f "$OVS_DB")")"
            ovsdb-tool create "$(readlink -f "$OVS_DB")" "$OVS_SCHEMA"
        fi
        log "starting ovsdb-server"
        ovsdb-server "$OVS_DB" \
            --remote=punix:"$OVS_RUN/db.sock" \
            --remote=db:Open_vSwitch,Open_vSwitch,manager_options \
            -vconsole:off --pidfile --detach --log-file=/var/log/openvswitch/ovsdb-server.log 9>&- ||
            die "ovsdb-server failed to start (see /var/log/openvswitch/ovsdb-server.log)"
        touch "$STATE_DIR/ovsdb-server"
        wait_for 20 ovsdb ovs_db_ready || die "ovsdb-server does not answer within 20s"
        ovs-vsctl --no-wait init
    fi
    if ! timeout 5 ovs-appctl --timeout=3 -t ovs-vswitchd version >/dev/null 2>&1; then
        log "starting ovs-vswitchd"
        ovs-vswitchd -vconsole:off --pidfile --detach --log-file=/var/log/openvswitch/ovs-vswitchd.log 9>&- ||
            die "ovs-vswitchd failed to start (see /var/log/openvswitch/ovs-vswitchd.log)"
        touch "$STATE_DIR/ovs-vswitchd"
    fi
    wait_for 30 ovs ovs_ready ||
        die "Open vSwitch does not answer 'ovs-vsctl show' within 30s (see /var/log/openvswitch/)"
    log "Open vSwitch ready"
}

start=$(date +%s)
start_rabbitmq
fix_kvm_perms
start_virtlogd
start_libvirtd
start_ovs
log "all services up ($(( $(date +%s) - start ))s)"
