#!/bin/bash
# Stop the services tools/start-services.sh started (best effort).  Only the
# services start-services.sh itself started are stopped, unless --all is
# given, which stops them whoever started them.
set -euo pipefail

STATE_DIR=${CA_SERVICES_STATE_DIR:-/run/compute-agent-services}
ALL=0
if [[ "${1:-}" == "--all" ]]; then
    ALL=1
fi

log() { echo "stop-services: $*"; }

mkdir -p "$STATE_DIR"
exec 9>"$STATE_DIR/lock"
flock 9

started() { [[ $ALL -eq 1 || -e "$STATE_DIR/$1" ]]; }

# wait_gone PID SECONDS
wait_gone() {
    local pid=$1 n=$(( $2 * 10 ))
    while kill -0 "$pid" 2>/dev/null && (( n-- > 0 )); do
        sleep 0.1
    done
    ! kill -0 "$pid" 2>/dev/null
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE
    local name=$1 pidfile=$2 pid
    if [[ -s "$pidfile" ]]; then
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            if ! wait_gone "$pid" 15; then
                log "$name did not exit, killing"
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
    fi
}

if started ovs-vswitchd; then
    log "stopping ovs-vswitchd"
    ovs-appctl --timeout=5 -t ovs-vswitchd exit >/dev/null 2>&1 || true
fi
if started ovsdb-server; then
    log "stopping ovsdb-server"
    ovs-appctl --timeout=5 -t ovsdb-server exit >/dev/null 2>&1 || true
fi
rm -f "$STATE_DIR/ovs-vswitchd" "$STATE_DIR/ovsdb-server"

if started libvirtd; then
    # tini forwards the signal to libvirtd and exits with it.
    stop_pidfile libvirtd /run/libvirtd.pid
    stop_pidfile tini "$STATE_DIR/libvirtd.tini.pid"
fi
rm -f "$STATE_DIR/libvirtd" "$STATE_DIR/libvirtd.tini.pid"

if started virtlogd; then
    stop_pidfile virtlogd /run/virtlogd.pid
fi
rm -f "$STATE_DIR/virtlogd"

if started rabbitmq; then
    log "stopping RabbitMQ"
    beam=$(pgrep -u rabbitmq -x beam.smp || true)
    timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 || log "rabbitmqctl stop failed (ignored)"
    # rabbitmqctl stop returns before the node's VM has exited.
    for pid in $beam; do
        wait_gone "$pid" 30 || log "RabbitMQ VM (pid $pid) still running"
    done
fi
rm -f "$STATE_DIR/rabbitmq"
log "done"
