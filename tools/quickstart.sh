#!/bin/bash
# README command 1: see compute-agent work end to end on a fresh Debian 12 /
# Ubuntu host, as root. Installs the system packages, starts RabbitMQ,
# libvirtd and OVS where they are not running (no systemd needed), installs
# the project into .venv, builds a tiny test guest and an image store, writes
# a local config, starts the agent, then through compute-agent-ctl --wait:
# spawn (each transition shown), console marker + VNC port, rescue,
# unrescue, destroy. Stops what it started. Exit 0 only when every step did
# what it said.
#   QUICKSTART_DIR   work directory (default /var/lib/compute-agent-quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
WORK=${QUICKSTART_DIR:-/var/lib/compute-agent-quickstart}
CACHE=${CA_TEST_CACHE:-/var/tmp/compute-agent-test-cache}
T0=$(date +%s)
step() { echo; echo "=== quickstart [$(( $(date +%s) - T0 ))s] $*"; }
fail() { echo "quickstart: FAILED: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "run as root (or: sudo tools/quickstart.sh)"

step "system packages"
tools/install-system-packages.sh

step "services (RabbitMQ, libvirtd, Open vSwitch)"
# A private marker dir: the stop at the end stops only what this run started.
CA_SERVICES_STATE_DIR=$(mktemp -d /run/compute-agent-quickstart.XXXXXX)
export CA_SERVICES_STATE_DIR
tools/start-services.sh

step "python venv and the agent"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q -U pip
.venv/bin/pip install -q -e .
CTL=(.venv/bin/compute-agent-ctl --config-file "$WORK/agent.conf")

step "test guest (kernel + busybox initramfs from Debian packages)"
tools/build-test-guest.sh "$CACHE/guest"

# kvm only where the CPU has hardware virtualization and /dev/kvm opens.
if grep -Eqw 'vmx|svm' /proc/cpuinfo && [[ -r /dev/kvm && -w /dev/kvm ]]; then
    VIRT_TYPE=kvm
else
    VIRT_TYPE=qemu
fi
echo "virt_type: $VIRT_TYPE ($( [[ $VIRT_TYPE == kvm ]] && echo 'hardware virtualization' || echo 'no vmx/svm or /dev/kvm unusable: QEMU TCG emulation'))"

# The guest of an earlier run that was interrupted: removed, as its files.
remove_guest() {
    if virsh -c qemu:///system dominfo quickstart-1 >/dev/null 2>&1; then
        virsh -c qemu:///system destroy quickstart-1 >/dev/null 2>&1 || true
        virsh -c qemu:///system undefine --managed-save quickstart-1 >/dev/null 2>&1 || true
    fi
}

step "image store and config in $WORK"
remove_guest
rm -rf "$WORK"
install -d -m 0755 "$WORK" "$WORK/images" "$WORK/state" "$WORK/state/instances"
cp "$CACHE/guest/vmlinuz" "$WORK/images/qs-kernel"
cp "$CACHE/guest/initrd.img" "$WORK/images/qs-ramdisk"
qemu-img create -q -f qcow2 "$WORK/images/qs-root" 64M
cat > "$WORK/agent.conf" <<EOF
[DEFAULT]
host = quickstart
state_path = $WORK/state
instances_path = $WORK/state/instances
transport_url = rabbit://guest:guest@localhost:5672/
report_interval = 10
[libvirt]
virt_type = $VIRT_TYPE
[images]
image_store_url = file://$WORK/images
[vnc]
enabled = true
server_listen = 127.0.0.1
EOF
UUID=$(python3 -c 'import uuid; print(uuid.uuid4())')
cat > "$WORK/spawn.json" <<EOF
{"instance": {"uuid": "$UUID", "name": "quickstart-1", "image_ref": "qs-root",
              "kernel_id": "qs-kernel", "ramdisk_id": "qs-ramdisk",
              "config_drive": true, "hostname": "quickstart-1",
              "flavor": {"memory_mb": 128, "vcpus": 1, "root_gb": 1}},
 "image_meta": {"id": "qs-root", "disk_format": "qcow2"}}
EOF

step "start the agent"
.venv/bin/compute-agent --config-file "$WORK/agent.conf" --log-file "$WORK/agent.log" &
AGENT=$!
cleanup() {
    if kill -0 "$AGENT" 2>/dev/null; then
        kill -TERM "$AGENT"; wait "$AGENT" || true
    fi
}
trap 'cleanup; remove_guest' EXIT
for _ in $(seq 60); do
    "${CTL[@]}" --timeout 2 ping >/dev/null 2>&1 && break
    kill -0 "$AGENT" 2>/dev/null || fail "the agent exited; see $WORK/agent.log"
    sleep 0.5
done
"${CTL[@]}" ping || fail "the agent does not answer ping"

step "spawn $UUID"
"${CTL[@]}" --timeout 120 spawn --request "$WORK/spawn.json" --wait || fail "spawn"

step "console: waiting for the guest's boot marker"
for _ in $(seq 120); do
    out=$("${CTL[@]}" console "$UUID" || true)
    grep -q "INSTANCE-UUID: $UUID" <<<"$out" && break
    sleep 0.5
done
grep -E "COMPUTE-AGENT-TEST-GUEST BOOTED|INSTANCE-UUID|BLOCK-DEVICES" <<<"$out" \
    || fail "no boot marker on the console"
grep -q "INSTANCE-UUID: $UUID" <<<"$out" || fail "the guest did not read its config drive"
echo "VNC console:"
"${CTL[@]}" vnc "$UUID" || fail "no VNC console"

step "rescue"
"${CTL[@]}" --timeout 120 rescue "$UUID" --wait || fail "rescue"
"${CTL[@]}" info "$UUID" | grep '"rescued"\|rescued' >/dev/null || fail "not rescued"

step "unrescue"
"${CTL[@]}" --timeout 120 unrescue "$UUID" --wait || fail "unrescue"
ls "$WORK/state/instances/quickstart-1" | grep -q '\.rescue$' && fail "rescue files left behind"

step "destroy"
"${CTL[@]}" --timeout 120 destroy "$UUID" --wait || fail "destroy"
[[ ! -e "$WORK/state/instances/quickstart-1" ]] || fail "instance directory left behind"
virsh -c qemu:///system dominfo "$UUID" >/dev/null 2>&1 && fail "domain left behind"

step "stop the agent and the services this run started"
cleanup
trap - EXIT
tools/stop-services.sh
rm -rf "$CA_SERVICES_STATE_DIR"
echo
echo "quickstart: OK in $(( $(date +%s) - T0 ))s: spawn, console, VNC, rescue, unrescue and destroy all worked ($VIRT_TYPE)"
