#!/bin/bash
# Install the Debian 12 system packages compute-agent needs for development
# and CI (RabbitMQ, libvirt + QEMU, Open vSwitch, the test-guest toolchain).
# Idempotent: when every package is already installed apt is not touched.
set -euo pipefail

PACKAGES=(
    rabbitmq-server
    libvirt-daemon
    libvirt-daemon-driver-qemu
    libvirt-daemon-system
    libvirt-clients
    libvirt-dev
    pkg-config
    qemu-system-x86
    qemu-utils
    # QEMU's userspace iSCSI/NFS/RBD initiators (block-iscsi.so, ...)
    qemu-block-extra
    # tgtd, the userspace iSCSI target the volume tests start
    tgt
    tini
    libxml2-utils
    openvswitch-switch
    busybox-static
    kmod
    iproute2
    systemd
    python3-venv
    gcc
    python3-dev
    ca-certificates
    # mkfs.vfat for vfat ephemeral disks
    dosfstools
    # used by tools/build-test-guest.sh to unpack compressed kernel modules
    xz-utils
    zstd
)

if [[ $(id -u) -ne 0 ]]; then
    echo "install-system-packages.sh: must run as root" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != ii* ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-system-packages.sh: all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

echo "install-system-packages.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
apt-get update -q
# Install the full list (not only the missing ones) so that apt resolves
# them together; already-installed packages are no-ops.
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
echo "install-system-packages.sh: done in $(( $(date +%s) - start ))s"
