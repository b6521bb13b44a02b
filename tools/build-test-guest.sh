#!/bin/bash
# Build a tiny bootable Linux test guest from Debian packages only:
#   OUTDIR/vmlinuz     the Debian cloud kernel (linux-image-*-cloud-amd64)
#   OUTDIR/initrd.img  a busybox initramfs whose /init reports what it sees on
#                      the serial console (see the /init script below)
# Nothing is installed on the host: the packages are fetched with
# `apt-get download` and unpacked with `dpkg -x` into a temp dir.
#
# Idempotent: when both files exist and OUTDIR/.build-stamp holds this
# script's sha256, nothing is done.
#
# The guest boots with `console=ttyS0` on the kernel command line and never
# mounts a root file system (root=... is ignored).  Extra command line
# parameters understood by /init:
#   ca_ip=<ip/prefix>   configure the first NIC (eth0) with that address
#   ca_ping=<ip>        ping <ip> (retrying for up to ~60 s); PING-OK/PING-FAIL
#   ca_poweroff         power off after the checks (POWERING-OFF)
#   ca_rescue           print RESCUE-MODE
#   ca_cd_wait=<s>      seconds to wait for the config drive (default 6)
#   ca_debug            keep kernel messages on the console after /init starts
#   ca_flood=<MiB>      write that many MiB of text to the console, then
#                       FLOOD-DONE (a guest that fills its console log)
#   ca_reboot_once      reboot itself once (REBOOTING-ONCE), remembered in a
#                       marker on the last MiB of the first disk (vda)
# Console lines printed by /init (one per line, at the start of the line):
#   COMPUTE-AGENT-TEST-GUEST BOOTED
#   KERNEL-CMDLINE: ...
#   RESCUE-MODE                         (ca_rescue)
#   CONFIG-DRIVE: /dev/xxx | NO-CONFIG-DRIVE
#   INSTANCE-UUID: <uuid>, HOSTNAME: <name>
#   BLOCK-DEVICES: vda vdb sr0 ...
#   NET-CONFIGURED: <if> <ip/prefix> <mac> | NET-CONFIG-FAILED: <why>
#   NET-GATEWAY: <ip>                   (a route with a gateway in network_data)
#   PING-OK <ip> | PING-FAIL <ip>
#   POWERING-OFF | READY
#   ACPI-POWER-BUTTON                   (graceful shutdown request; powers off)
#   HEARTBEAT <n>                       (every 10 s once READY)
#   FLOOD-DONE <MiB>                    (ca_flood)
#   REBOOTING-ONCE | REBOOTED-ONCE      (ca_reboot_once: before / after)
#   DISK <name> SERIAL <serial|-> MARKER <text|->   (each disk, after BLOCK-DEVICES)
#   WROTE <name> SERIAL <serial> | WRITE-FAILED <serial>   (meta write_marker)
#   HOTPLUG-DISK <name> SERIAL <serial|-> MARKER <text|->   (after READY)
#   HOTPLUG-GONE <name>                 (a disk left, after READY)
#   HOTPLUG-NIC <ifname> <mac> | HOTPLUG-NIC-GONE <ifname>  (after READY)
#   HOTPLUG-PING-OK <ip> | HOTPLUG-PING-FAIL <ip>  (meta hotplug_nic, below)
# A disk's MARKER is the text after "CA-MARKER " on the first line of its
# first 512 bytes ("-" when there is none); its SERIAL is
# /sys/block/<name>/serial (the <serial> of the disk XML).
# The config drive's openstack/latest/meta_data.json may carry
#   "meta": {"ping": "<ip>", "poweroff": "1", "flood": "<MiB>",
#            "reboot_once": "1"} with the same effect as
# ca_ping / ca_poweroff / ca_flood / ca_reboot_once.
# It may also carry "write_marker": "<serial>:<text> ..." to write
# "CA-GUEST <text>" plus a newline at byte 4096 of the disk with that serial,
# and "hotplug_nic": "<mac>=<ip/prefix>=<ping ip> ..." to configure a NIC
# with that MAC when it is hot-plugged and ping the address through it.
# -- snapshot round trip (snapshot branch; meta key, optional) --
#   "write_disk": "<name>:<text> ..."  like write_marker, but the disk is
#                          named (vda, the root disk, has no serial): writes
#                          "CA-GUEST <text>" + newline at byte 4096 of
#                          /dev/<name>, fsync'ed; prints "WROTE-DISK <name>"
#                          or "WRITE-DISK-FAILED <name>"
#   At boot, before any write, each disk's line at byte 4096 is printed:
#   "AT4096 <name> <text after CA-GUEST |->" (a guest spawned from a
#   snapshot shows what its source wrote).
# -- network filter probes (filters branch; meta keys, all optional) --
#   "nf_count": "1"        print "NF-INECHOS <n>" every second: ICMP echo
#                          requests received (/proc/net/snmp Icmp InEchos)
#   "nf_listen": "P1 P2"   answer NF-HELLO on each TCP port (busybox nc -ll)
#   "nf_probe": "<ip>"     every second: one ping and a TCP connect to each
#                          port of "nf_ports" ("P1 P2"), printing
#                          "NF-PROBE <n> icmp=ok|fail tcpP1=ok|fail ..."
#   "nf_spoof": "<ip>"     before probing, the spoof sequence against <ip>:
#                          NF-PHASE own-start, 5 pings from its own address,
#                          NF-PHASE own-end; the same with a foreign source
#                          address "nf_spoof_ip" (spoof-ip-start/end) and
#                          with a foreign MAC "nf_spoof_mac"
#                          (spoof-mac-start/end); each phase waits 3 s
#                          before and after its pings; then NF-SPOOF-DONE.
# -- resize probes (resize branch) --
# Printed at every boot, after the DISK lines:
#   MEMTOTAL-KB <n>             MemTotal of /proc/meminfo
#   NPROC <n>                   processors in /proc/cpuinfo
#   DISK-SIZE <name> <bytes>    size of each disk (/sys/block/<name>/size)
# and, with the meta key "disk_counter": "<name>" (e.g. "vda"):
#   DISK-COUNTER <name> <n>     the boot counter kept in the sector at 1 MiB
#                               of that disk, as found (0 when none); the
#                               guest then writes n+1 there (fsync'ed), so a
#                               disk put back as it was shows the old count
# -- guest agent (issue 15; meta keys, all optional) --
# qemu-ga (Debian's qemu-guest-agent) starts on the org.qemu.guest_agent.0
# virtio port after the network is configured (so it reports the addresses).
# guest-set-user-password works through a shell chpasswd (busybox mkpasswd
# -m sha512 + sed on /etc/shadow; /etc/passwd and /etc/shadow hold root).
#   "guest_agent": "off"   boot WITHOUT a guest agent (GA-OFF)
#   "guest_agent": "hang"  a stub guest agent instead of qemu-ga: answers
#                          guest-sync, guest-ping, guest-fsfreeze-status
#                          ("thawed") and guest-fsfreeze-thaw, but never
#                          guest-fsfreeze-freeze (GA-STUB-FREEZE-IGNORED)
#                          nor guest-set-user-password
#                          (GA-STUB-PASSWORD-IGNORED)
#   "ga_ext4": "<serial or name>"  mount the ext4 file system on that disk
#                          at /mnt/ga-ext4 (something for fsfreeze to freeze)
# Console lines:
#   GA-EXT4-MOUNTED <name> | GA-EXT4-FAILED <serial or name>
#   GA-STARTED <port> | GA-STUB <port> | GA-OFF | GA-NO-CHANNEL
#   GA-PASSWORD-SET <user>              (chpasswd ran for that user)
#   GA-STUB-FREEZE-IGNORED | GA-STUB-PASSWORD-IGNORED  (the stub got one)
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
[[ $# -eq 1 ]] || usage

OUTDIR=$1
SCRIPT_PATH=$(readlink -f "${BASH_SOURCE[0]}")
SCRIPT_SUM=$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)
STAMP="$OUTDIR/.build-stamp"
T0=$(date +%s.%N)

elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "build-test-guest: [$(elapsed)s] $*"; }
die() { echo "build-test-guest: ERROR: $*" >&2; exit 1; }

if [[ -s "$OUTDIR/vmlinuz" && -s "$OUTDIR/initrd.img" && -f "$STAMP" &&
      "$(cat "$STAMP")" == "$SCRIPT_SUM" ]]; then
    log "up to date in $OUTDIR"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (mknod /dev/console for the initramfs)"
for tool in apt-get apt-cache dpkg depmod modprobe gzip; do
    command -v "$tool" >/dev/null || die "$tool not found (run tools/install-system-packages.sh)"
done

mkdir -p "$OUTDIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ca-test-guest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
chmod 0755 "$WORK"
DL="$WORK/dl"
mkdir -p "$DL"
# apt-get download drops privileges to _apt; let it write there (otherwise
# it works but warns about an unsandboxed download).
if id _apt >/dev/null 2>&1; then
    chown _apt "$DL"
fi

# ------------------------------------------------------------------ kernel
kernel_pkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1
}
KPKG=$(kernel_pkg || true)
if [[ -z "$KPKG" ]]; then
    log "no package lists for linux-image-cloud-amd64; running apt-get update"
    apt-get update -q >/dev/null
    KPKG=$(kernel_pkg || true)
fi
[[ -n "$KPKG" ]] || die "cannot resolve the kernel package linux-image-cloud-amd64 depends on"
log "downloading $KPKG"
(cd "$DL" && apt-get download -q "$KPKG" >/dev/null) || die "apt-get download $KPKG failed"
KROOT="$WORK/kernel"
dpkg -x "$DL"/"$KPKG"_*.deb "$KROOT"
log "unpacked $KPKG"

VMLINUZ=$(find "$KROOT/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n 1)
[[ -n "$VMLINUZ" ]] || die "no boot/vmlinuz-* in $KPKG"
KV=${VMLINUZ##*/vmlinuz-}
# depmod/modprobe -b/-d look in BASE/lib/modules; newer packages ship
# usr/lib/modules only.
if [[ ! -d "$KROOT/lib/modules/$KV" && -d "$KROOT/usr/lib/modules/$KV" ]]; then
    mkdir -p "$KROOT/lib"
    ln -s ../usr/lib/modules "$KROOT/lib/modules"
fi
[[ -d "$KROOT/lib/modules/$KV" ]] || die "no modules for $KV in $KPKG"
depmod -b "$KROOT" "$KV"

# ------------------------------------------------------------------ busybox
if [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' busybox-static 2>/dev/null || true)" == ii* &&
      -x /bin/busybox ]]; then
    BUSYBOX=/bin/busybox
else
    log "downloading busybox-static"
    (cd "$DL" && apt-get download -q busybox-static >/dev/null) || die "apt-get download busybox-static failed"
    dpkg -x "$DL"/busybox-static_*.deb "$WORK/bb"
    BUSYBOX="$WORK/bb/bin/busybox"
fi
[[ -x "$BUSYBOX" ]] || die "no busybox binary"

# ------------------------------------------------------------------ initramfs
STAGE="$WORK/initramfs"
mkdir -p "$STAGE"/{bin,dev,proc,sys,tmp,run,mnt/config,etc,lib/modules,root}
cp "$BUSYBOX" "$STAGE/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [[ "$applet" == busybox ]] && continue
    ln -sf busybox "$STAGE/bin/$applet"
done
ln -s bin "$STAGE/sbin"
# The kernel opens /dev/console for init before devtmpfs can be mounted.
mknod -m 600 "$STAGE/dev/console" c 5 1
mknod -m 666 "$STAGE/dev/null" c 1 3

# Modules, in load order.  Required ones must exist as modules or be built in;
# optional ones are taken when the kernel has them.
REQUIRED_MODULES=(virtio_ring virtio virtio_pci virtio_blk virtio_net
                  scsi_common scsi_mod cdrom sr_mod libata ata_piix isofs)
OPTIONAL_MODULES=(virtio_scsi sd_mod ata_generic ahci virtio_console virtio_balloon
                  virtio_rng button evdev)
declare -A SEEN=()
ORDER=()
add_module() {  # add_module NAME REQUIRED(0/1)
    local name=$1 required=$2 out line path base
    if ! out=$(modprobe -d "$KROOT" -S "$KV" --show-depends "$name" 2>&1); then
        if grep -qx "$name" <(sed -e 's/\.ko.*$//' -e 's/.*\///' \
                "$KROOT/lib/modules/$KV/modules.builtin" | tr - _); then
            return 0
        fi
        if [[ $required -eq 1 ]]; then
            die "required module $name not found in $KPKG: $out"
        fi
        log "optional module $name not in $KPKG, skipped"
        return 0
    fi
    while read -r line; do
        case "$line" in
            insmod\ *)
                path=${line#insmod }
                path=${path%% *}
                base=${path##*/}
                base=${base%%.ko*}
                if [[ -z "${SEEN[$base]:-}" ]]; then
                    SEEN[$base]=1
                    ORDER+=("$base")
                    case "$path" in
                        *.ko) cp "$path" "$STAGE/lib/modules/$base.ko" ;;
                        *.ko.xz) xz -dc "$path" >"$STAGE/lib/modules/$base.ko" ;;
                        *.ko.zst) zstd -q -dc "$path" >"$STAGE/lib/modules/$base.ko" ;;
                        *.ko.gz) gzip -dc "$path" >"$STAGE/lib/modules/$base.ko" ;;
                        *) die "unknown module file type: $path" ;;
                    esac
                fi
                ;;
            builtin\ *) ;;
            *) [[ -z "$line" ]] || log "modprobe: $line" ;;
        esac
    done <<<"$out"
}
for m in "${REQUIRED_MODULES[@]}"; do add_module "$m" 1; done
for m in "${OPTIONAL_MODULES[@]}"; do add_module "$m" 0; done
printf '%s\n' "${ORDER[@]}" >"$STAGE/etc/modules.order"
log "modules (${#ORDER[@]}): ${ORDER[*]}"

# ------------------------------------------------------------------ guest agent (issue 15)
# qemu-ga with the libraries ldd names and the ELF interpreter; a shell
# chpasswd for guest-set-user-password; the hanging stub agent.
log "downloading qemu-guest-agent"
(cd "$DL" && apt-get download -q qemu-guest-agent >/dev/null) ||
    die "apt-get download qemu-guest-agent failed"
dpkg -x "$DL"/qemu-guest-agent_*.deb "$WORK/qga"
QGA="$WORK/qga/usr/sbin/qemu-ga"
[[ -x "$QGA" ]] || die "no usr/sbin/qemu-ga in qemu-guest-agent"
cp "$QGA" "$STAGE/bin/qemu-ga"
for lib in $(ldd "$QGA" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }'); do
    mkdir -p "$STAGE$(dirname "$lib")"
    cp -L "$lib" "$STAGE$lib"
done
[[ -e "$STAGE/lib64/ld-linux-x86-64.so.2" ]] || die "qemu-ga's ld-linux not copied"
mkdir -p "$STAGE/var/run" "$STAGE/mnt/ga-ext4"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$STAGE/etc/passwd"
printf 'root:*:19000:0:99999:7:::\n' >"$STAGE/etc/shadow"
chmod 0600 "$STAGE/etc/shadow"
rm -f "$STAGE/bin/chpasswd"
cat >"$STAGE/bin/chpasswd" <<'CHPASSWD'
#!/bin/sh
# "user:password" lines on stdin (qemu-ga's guest-set-user-password, plain).
[ "$1" = "-e" ] && exit 1     # only plain-text passwords here
while IFS= read -r line || [ -n "$line" ]; do
    user=${line%%:*}
    pass=${line#*:}
    grep -q "^$user:" /etc/shadow || exit 1
    hash=$(mkpasswd -m sha512 "$pass") || exit 1
    sed -i "s|^$user:[^:]*:|$user:$hash:|" /etc/shadow || exit 1
    echo "GA-PASSWORD-SET $user" >/dev/console
done
CHPASSWD
cat >"$STAGE/bin/ga-stub" <<'STUB'
#!/bin/sh
# A guest agent that answers guest-sync and guest-ping but never a freeze.
exec 3<>"$1"
while :; do
    while IFS= read -r line <&3; do
        case "$line" in
            *guest-sync*)
                id=$(echo "$line" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p')
                printf '{"return": %s}\n' "$id" >&3 ;;
            *guest-ping*) printf '{"return": {}}\n' >&3 ;;
            *guest-fsfreeze-status*) printf '{"return": "thawed"}\n' >&3 ;;
            *guest-fsfreeze-thaw*) printf '{"return": 0}\n' >&3 ;;
            *guest-fsfreeze-freeze*) echo "GA-STUB-FREEZE-IGNORED" >/dev/console ;;
            *guest-set-user-password*) echo "GA-STUB-PASSWORD-IGNORED" >/dev/console ;;
            *) printf '{"error": {"class": "CommandNotFound", "desc": "stub"}}\n' >&3 ;;
        esac
    done
    sleep 0.2
done
STUB
chmod 0755 "$STAGE/bin/chpasswd" "$STAGE/bin/ga-stub"
log "qemu-ga and $(find "$STAGE/lib" "$STAGE/lib64" -name '*.so*' | wc -l) libraries added"
# ------------------------------------------------------------------ end of guest agent

cat >"$STAGE/init" <<'INIT'
#!/bin/sh
# compute-agent test guest /init: runs entirely from the initramfs.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/input
CMDLINE=$(cat /proc/cmdline)

has_opt() {  # has_opt WORD: is WORD on the kernel command line?
    for w in $CMDLINE; do [ "$w" = "$1" ] && return 0; done
    return 1
}
opt_val() {  # opt_val KEY: value of KEY=value on the kernel command line
    for w in $CMDLINE; do
        case "$w" in "$1"=*) echo "${w#*=}"; return 0 ;; esac
    done
    return 1
}
json_str() {  # json_str KEY FILE: first "KEY": "value" in FILE
    grep -o "\"$1\": *\"[^\"]*\"" "$2" 2>/dev/null | head -n 1 |
        sed 's/^"[^"]*": *"\(.*\)"$/\1/'
}
uptime_s() { cut -d. -f1 /proc/uptime; }

# Keep kernel messages from interleaving with our console lines.
has_opt ca_debug || dmesg -n 1

while read -r m; do
    insmod "/lib/modules/$m.ko" 2>/dev/null || echo "INSMOD-FAILED: $m"
done </etc/modules.order

echo "COMPUTE-AGENT-TEST-GUEST BOOTED"
echo "KERNEL-CMDLINE: $CMDLINE"
if has_opt ca_rescue; then
    echo "RESCUE-MODE"
fi

# ACPI power button (virDomainShutdown, and libvirt's reboot): power off.
for e in /sys/class/input/event*; do
    [ -e "$e/device/name" ] || continue
    case "$(cat "$e/device/name")" in
        *"Power Button"*)
            ev=/dev/input/${e##*/}
            (
                dd if="$ev" of=/dev/null bs=24 count=1 2>/dev/null &&
                    { echo "ACPI-POWER-BUTTON"; sync; poweroff -f; }
            ) &
            ;;
    esac
done

# ------------------------------------------------------------ config drive
iso_label() {  # the ISO 9660 volume identifier of block device $1
    [ "$(dd if="$1" bs=1 skip=32769 count=5 2>/dev/null)" = "CD001" ] || return 1
    dd if="$1" bs=1 skip=32808 count=32 2>/dev/null | sed 's/ *$//'
}
find_config_drive() {
    local dev
    dev=$(findfs LABEL=config-2 2>/dev/null) && [ -b "$dev" ] && { echo "$dev"; return 0; }
    for dev in /dev/vd* /dev/sr* /dev/sd* /dev/hd*; do
        [ -b "$dev" ] || continue
        if command -v blkid >/dev/null 2>&1; then
            blkid "$dev" 2>/dev/null | grep -q 'LABEL="config-2"' && { echo "$dev"; return 0; }
        fi
        [ "$(iso_label "$dev")" = "config-2" ] && { echo "$dev"; return 0; }
    done
    return 1
}
CD_WAIT=$(opt_val ca_cd_wait || echo 6)
CD_DEV=
end=$(( $(uptime_s) + CD_WAIT ))
while :; do
    CD_DEV=$(find_config_drive) && break
    CD_DEV=
    [ "$(uptime_s)" -ge "$end" ] && break
    sleep 0.3
done
META=
NETDATA=
if [ -n "$CD_DEV" ] && { mount -t iso9660 -o ro "$CD_DEV" /mnt/config 2>/dev/null ||
                        mount -o ro "$CD_DEV" /mnt/config 2>/dev/null; }; then
    echo "CONFIG-DRIVE: $CD_DEV"
    [ -f /mnt/config/openstack/latest/meta_data.json ] && META=/mnt/config/openstack/latest/meta_data.json
    [ -f /mnt/config/openstack/latest/network_data.json ] && NETDATA=/mnt/config/openstack/latest/network_data.json
    if [ -n "$META" ]; then
        echo "INSTANCE-UUID: $(json_str uuid "$META")"
        name=$(json_str hostname "$META")
        if [ -n "$name" ]; then
            hostname "$name"
            echo "HOSTNAME: $name"
        fi
    else
        echo "NO-META-DATA"
    fi
else
    echo "NO-CONFIG-DRIVE"
fi

# ------------------------------------------------------------ block devices
devs=
for b in /sys/block/*; do
    [ -e "$b" ] || continue
    b=${b##*/}
    case "$b" in loop*|ram*|zram*) continue ;; esac
    devs="$devs $b"
done
echo "BLOCK-DEVICES:$devs"
disk_serial() { local s; s=$(cat "/sys/block/$1/serial" 2>/dev/null | tr -cd 'A-Za-z0-9._:-'); echo "${s:--}"; }
disk_marker() {  # disk_marker NAME: text after "CA-MARKER " at the disk's start
    local line i=0
    while [ $i -lt 10 ]; do
        if [ -b "/dev/$1" ]; then
            line=$(dd if="/dev/$1" bs=512 count=1 2>/dev/null | head -n 1 | tr -cd 'A-Za-z0-9 ._:=-')
            case "$line" in "CA-MARKER "*) echo "${line#CA-MARKER }"; return 0 ;; esac
            echo "-"; return 0
        fi
        sleep 0.1
        i=$((i + 1))
    done
    echo "-"
}
describe_disk() { echo "SERIAL $(disk_serial "$1") MARKER $(disk_marker "$1")"; }
for d in $devs; do
    case "$d" in vd*|sd*|hd*|xvd*) echo "DISK $d $(describe_disk "$d")" ;; esac
done
# ------------------------------------------------------------ snapshot round trip
# (snapshot branch: see "snapshot round trip" in the header comment)
at4096() {  # at4096 NAME: text after "CA-GUEST " at byte 4096 of the disk
    local line
    line=$(dd if="/dev/$1" bs=512 skip=8 count=1 2>/dev/null | head -n 1 | tr -cd 'A-Za-z0-9 ._:=-')
    case "$line" in "CA-GUEST "*) echo "${line#CA-GUEST }" ;; *) echo "-" ;; esac
}
for d in $devs; do
    case "$d" in vd*|sd*|hd*|xvd*) echo "AT4096 $d $(at4096 "$d")" ;; esac
done
DISK_WRITES=
[ -n "$META" ] && DISK_WRITES=$(json_str write_disk "$META")
for w in $DISK_WRITES; do
    name=${w%%:*}
    text=${w#*:}
    case "$name" in
        vd[a-z]|sd[a-z]|hd[a-z]|xvd[a-z]) ;;
        *) echo "WRITE-DISK-FAILED $name"; continue ;;
    esac
    if [ -b "/dev/$name" ] && printf 'CA-GUEST %s\n' "$text" |
            dd of="/dev/$name" bs=512 seek=8 conv=notrunc,fsync 2>/dev/null; then
        sync
        echo "WROTE-DISK $name"
    else
        echo "WRITE-DISK-FAILED $name"
    fi
done
# ------------------------------------------------------------ end of snapshot round trip
WRITES=
[ -n "$META" ] && WRITES=$(json_str write_marker "$META")
for w in $WRITES; do
    serial=${w%%:*}
    text=${w#*:}
    target=
    for d in $devs; do [ "$(disk_serial "$d")" = "$serial" ] && target=$d; done
    if [ -n "$target" ] && printf 'CA-GUEST %s\n' "$text" |
            dd of="/dev/$target" bs=512 seek=8 conv=notrunc,fsync 2>/dev/null; then
        sync
        echo "WROTE $target SERIAL $serial"
    else
        echo "WRITE-FAILED $serial"
    fi
done

# ------------------------------------------------------------ resize probes
# (resize branch: see "resize probes" in the header comment)
echo "MEMTOTAL-KB $(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)"
echo "NPROC $(grep -c '^processor' /proc/cpuinfo)"
for d in $devs; do
    case "$d" in
        vd*|sd*|hd*|xvd*) echo "DISK-SIZE $d $(( $(cat "/sys/block/$d/size") * 512 ))" ;;
    esac
done
COUNTER_DEV=
[ -n "$META" ] && COUNTER_DEV=$(json_str disk_counter "$META")
if [ -n "$COUNTER_DEV" ] && [ -b "/dev/$COUNTER_DEV" ]; then
    n=$(dd if="/dev/$COUNTER_DEV" bs=512 skip=2048 count=1 2>/dev/null | head -n 1 |
        tr -cd 'A-Z0-9 -' | sed -n 's/^CA-COUNTER \([0-9]*\)$/\1/p')
    n=${n:-0}
    echo "DISK-COUNTER $COUNTER_DEV $n"
    printf 'CA-COUNTER %s\n' $((n + 1)) |
        dd of="/dev/$COUNTER_DEV" bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null
    sync
fi
# ------------------------------------------------------------ end of resize probes

# ------------------------------------------------------------ network
mask2prefix() {
    local n=0 o
    for o in $(echo "$1" | tr . ' '); do
        case "$o" in
            255) n=$((n + 8)) ;; 254) n=$((n + 7)) ;; 252) n=$((n + 6)) ;;
            248) n=$((n + 5)) ;; 240) n=$((n + 4)) ;; 224) n=$((n + 3)) ;;
            192) n=$((n + 2)) ;; 128) n=$((n + 1)) ;;
        esac
    done
    echo "$n"
}
wait_iface() {  # wait up to 5 s for a network interface other than lo
    local i=0 n
    while [ $i -lt 25 ]; do
        for n in /sys/class/net/*; do
            [ "${n##*/}" = lo ] || return 0
        done
        sleep 0.2
        i=$((i + 1))
    done
    return 1
}
ip link set lo up
if [ -n "$NETDATA" ]; then
    mac=$(json_str ethernet_mac_address "$NETDATA" | tr 'A-F' 'a-f')
    # networks[0]: the text after "networks": with the routes lists (which
    # have their own "netmask") cut out, so the first ip_address/netmask
    # found belong to the first network.
    tr -d '\n' <"$NETDATA" | sed -e 's/.*"networks": *\[//' >/tmp/networks.json
    gw=$(json_str gateway /tmp/networks.json)
    sed -i -e 's/"routes": *\[[^]]*\]//g' /tmp/networks.json
    addr=$(json_str ip_address /tmp/networks.json)
    mask=$(json_str netmask /tmp/networks.json)
    mtu=$(grep -o '"mtu": *[0-9]*' "$NETDATA" | head -n 1 | sed 's/.*: *//')
    wait_iface
    ifname=
    for n in /sys/class/net/*; do
        [ "$(cat "$n/address" 2>/dev/null)" = "$mac" ] && ifname=${n##*/}
    done
    if [ -z "$ifname" ]; then
        echo "NET-CONFIG-FAILED: no interface with MAC $mac"
    elif [ -z "$addr" ]; then
        ip link set "$ifname" up
        echo "NET-CONFIG-FAILED: no ip_address in network_data.json"
    else
        [ -n "$mtu" ] && ip link set "$ifname" mtu "$mtu"
        ip link set "$ifname" up
        prefix=$(mask2prefix "${mask:-255.255.255.0}")
        ip addr add "$addr/$prefix" dev "$ifname" &&
            echo "NET-CONFIGURED: $ifname $addr/$prefix $mac"
        if [ -n "$gw" ] && ip route add default via "$gw" dev "$ifname" 2>/dev/null; then
            echo "NET-GATEWAY: $gw"
        fi
    fi
fi
CA_IP=$(opt_val ca_ip || true)
if [ -n "$CA_IP" ]; then
    wait_iface
    if ip link set eth0 up && ip addr add "$CA_IP" dev eth0; then
        echo "NET-CONFIGURED: eth0 $CA_IP $(cat /sys/class/net/eth0/address)"
    else
        echo "NET-CONFIG-FAILED: eth0 $CA_IP"
    fi
fi

PING=$(opt_val ca_ping || true)
[ -z "$PING" ] && [ -n "$META" ] && PING=$(json_str ping "$META")
if [ -n "$PING" ]; then
    end=$(( $(uptime_s) + 60 ))
    ok=0
    while :; do
        out=$(ping -c 5 -W 2 "$PING" 2>&1) && ok=1
        echo "$out"
        [ $ok -eq 1 ] && break
        [ "$(uptime_s)" -ge "$end" ] && break
        sleep 1
    done
    if [ $ok -eq 1 ]; then echo "PING-OK $PING"; else echo "PING-FAIL $PING"; fi
fi

# ------------------------------------------------------------ network filter probes
# (filters branch: see "network filter probes" in the header comment)
nf_meta() { [ -n "$META" ] && json_str "$1" "$META"; }
NF_IF=$(ip -o link show | sed -n 's/^[0-9]*: \(eth[0-9]*\).*/\1/p' | head -n 1)
if [ "$(nf_meta nf_count)" = 1 ]; then
    (
        while :; do
            echo "NF-INECHOS $(awk '/^Icmp:/ { if (!h) { for (i = 2; i <= NF; i++) if ($i == "InEchos") c = i; h = 1 } else print $c }' /proc/net/snmp)"
            sleep 1
        done
    ) &
fi
NF_LISTEN=$(nf_meta nf_listen)
if [ -n "$NF_LISTEN" ]; then
    printf '#!/bin/sh\necho NF-HELLO\n' >/tmp/nf-hello
    chmod 755 /tmp/nf-hello
    for p in $NF_LISTEN; do
        nc -ll -p "$p" -e /tmp/nf-hello &
    done
    echo "NF-LISTENING: $NF_LISTEN"
fi
nf_phase() {  # nf_phase NAME ARGS...: 5 pings between two markers
    local name=$1; shift
    echo "NF-PHASE $name-start"
    sleep 3
    ping -c 5 -i 0.2 -W 1 "$@" >/dev/null 2>&1
    sleep 3
    echo "NF-PHASE $name-end"
}
NF_SPOOF=$(nf_meta nf_spoof)
if [ -n "$NF_SPOOF" ] && [ -n "$NF_IF" ]; then
    nf_phase own "$NF_SPOOF"
    sip=$(nf_meta nf_spoof_ip)
    if [ -n "$sip" ]; then
        ip addr add "$sip/32" dev "$NF_IF"
        nf_phase spoof-ip -I "$sip" "$NF_SPOOF"
        ip addr del "$sip/32" dev "$NF_IF"
    fi
    smac=$(nf_meta nf_spoof_mac)
    if [ -n "$smac" ]; then
        omac=$(cat "/sys/class/net/$NF_IF/address")
        ip link set "$NF_IF" address "$smac"
        nf_phase spoof-mac "$NF_SPOOF"
        ip link set "$NF_IF" address "$omac"
    fi
    echo "NF-SPOOF-DONE"
fi
NF_PROBE=$(nf_meta nf_probe)
if [ -n "$NF_PROBE" ]; then
    NF_PORTS=$(nf_meta nf_ports)
    (
        n=0
        while :; do
            n=$((n + 1))
            if ping -c 1 -W 1 "$NF_PROBE" >/dev/null 2>&1; then r="icmp=ok"; else r="icmp=fail"; fi
            for p in $NF_PORTS; do
                if echo | nc -w 2 "$NF_PROBE" "$p" 2>/dev/null | grep -q NF-HELLO; then
                    r="$r tcp$p=ok"
                else
                    r="$r tcp$p=fail"
                fi
            done
            echo "NF-PROBE $n $r"
            sleep 1
        done
    ) &
fi
# ------------------------------------------------------------ end of network filter probes

# ------------------------------------------------------------ guest agent (issue 15)
# (see "guest agent" in the header comment)
ga_meta() { [ -n "$META" ] && json_str "$1" "$META"; }
GA_EXT4=$(ga_meta ga_ext4)
if [ -n "$GA_EXT4" ]; then
    target=
    for d in $devs; do
        [ "$d" = "$GA_EXT4" ] || [ "$(disk_serial "$d")" = "$GA_EXT4" ] && target=$d
    done
    if [ -n "$target" ] && mount -t ext4 "/dev/$target" /mnt/ga-ext4 2>/dev/null; then
        echo "booted $(uptime_s)" >/mnt/ga-ext4/ga-boot && sync
        echo "GA-EXT4-MOUNTED $target"
    else
        echo "GA-EXT4-FAILED $GA_EXT4"
    fi
fi
ga_port() {  # the /dev node of the guest agent's virtio port
    local p
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && { echo "/dev/${p##*/}"; return 0; }
    done
    return 1
}
GA_MODE=$(ga_meta guest_agent)
if [ "$GA_MODE" = off ]; then
    echo "GA-OFF"
else
    GA_PORT=
    i=0
    while [ $i -lt 25 ]; do
        GA_PORT=$(ga_port) && [ -c "$GA_PORT" ] && break
        GA_PORT=
        sleep 0.2
        i=$((i + 1))
    done
    if [ -z "$GA_PORT" ]; then
        echo "GA-NO-CHANNEL"
    elif [ "$GA_MODE" = hang ]; then
        ga-stub "$GA_PORT" &
        echo "GA-STUB $GA_PORT"
    else
        qemu-ga -m virtio-serial -p "$GA_PORT" -t /var/run -l /tmp/qemu-ga.log &
        echo "GA-STARTED $GA_PORT"
    fi
fi
# ------------------------------------------------------------ end of guest agent

# ------------------------------------------------------------ finish
if has_opt ca_poweroff || { [ -n "$META" ] && [ "$(json_str poweroff "$META")" = 1 ]; }; then
    echo "POWERING-OFF"
    [ -n "$CD_DEV" ] && umount /mnt/config 2>/dev/null
    sync
    poweroff -f
    sleep 10
fi
FLOOD=$(opt_val ca_flood || true)
[ -z "$FLOOD" ] && [ -n "$META" ] && FLOOD=$(json_str flood "$META")
if [ -n "$FLOOD" ]; then
    line=FLOOD-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789
    yes "$line" | head -c $((FLOOD * 1048576)) >/dev/console
    echo
    echo "FLOOD-DONE $FLOOD"
fi
if { has_opt ca_reboot_once || { [ -n "$META" ] && [ "$(json_str reboot_once "$META")" = 1 ]; }; } &&
        [ -b /dev/vda ]; then
    # The disk outlives a reboot; the initramfs does not.
    sectors=$(cat /sys/block/vda/size)
    off=$(( sectors / 2048 - 1 ))
    if [ "$(dd if=/dev/vda bs=1M skip=$off count=1 2>/dev/null | head -c 13)" = "REBOOTED-ONCE" ]; then
        echo "REBOOTED-ONCE"
    else
        printf 'REBOOTED-ONCE' | dd of=/dev/vda bs=1M seek=$off conv=notrunc 2>/dev/null
        sync
        echo "REBOOTING-ONCE"
        reboot -f
        sleep 10
    fi
fi
echo "READY"
# Harmless heartbeat: shows on the console that the guest is still running
# (e.g. after a pause/resume).
(
    n=0
    while :; do
        sleep 10
        n=$((n + 1))
        echo "HEARTBEAT $n"
    done
) &
HOTPLUG_NICS=
[ -n "$META" ] && HOTPLUG_NICS=$(json_str hotplug_nic "$META")
configure_hotplug_nic() {  # configure_hotplug_nic IFNAME MAC (in the background)
    local spec rest
    for spec in $HOTPLUG_NICS; do
        [ "${spec%%=*}" = "$2" ] || continue
        rest=${spec#*=}
        ip link set "$1" up && ip addr add "${rest%%=*}" dev "$1" || continue
        if ping -c 3 -W 2 "${rest#*=}" >/dev/null 2>&1 ||
                ping -c 5 -W 2 "${rest#*=}" >/dev/null 2>&1; then
            echo "HOTPLUG-PING-OK ${rest#*=}"
        else
            echo "HOTPLUG-PING-FAIL ${rest#*=}"
        fi
    done
}
# Watch for hot-plugged (and removed) disks and NICs; shell globs only, so a
# pass costs no fork unless something changed.
known_disks=" "
for b in /sys/block/*; do known_disks="$known_disks${b##*/} "; done
known_nics=" "
for n in /sys/class/net/*; do known_nics="$known_nics${n##*/} "; done
while :; do
    sleep 0.2
    now=" "
    for b in /sys/block/*; do
        [ -e "$b" ] || continue
        d=${b##*/}
        now="$now$d "
        case "$known_disks" in
            *" $d "*) ;;
            *) echo "HOTPLUG-DISK $d $(describe_disk "$d")" ;;
        esac
    done
    for d in $known_disks; do
        case "$now" in *" $d "*) ;; *) echo "HOTPLUG-GONE $d" ;; esac
    done
    known_disks=$now
    now=" "
    for n in /sys/class/net/*; do
        [ -e "$n" ] || continue
        i=${n##*/}
        now="$now$i "
        case "$known_nics" in
            *" $i "*) ;;
            *)
                mac=$(cat "$n/address" 2>/dev/null)
                echo "HOTPLUG-NIC $i $mac"
                [ -n "$HOTPLUG_NICS" ] && configure_hotplug_nic "$i" "$mac" &
                ;;
        esac
    done
    for i in $known_nics; do
        case "$now" in *" $i "*) ;; *) echo "HOTPLUG-NIC-GONE $i" ;; esac
    done
    known_nics=$now
done
INIT
chmod 0755 "$STAGE/init"

log "packing initramfs"
# busybox's own cpio (Debian has no cpio binary without the cpio package).
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) |
    gzip -9 >"$WORK/initrd.img"
cp "$VMLINUZ" "$WORK/vmlinuz"

# Readable by libvirt-qemu (QEMU does not run as root).
chmod 0755 "$OUTDIR"
chmod 0644 "$WORK/vmlinuz" "$WORK/initrd.img"
rm -f "$STAMP"
mv -f "$WORK/vmlinuz" "$OUTDIR/vmlinuz"
mv -f "$WORK/initrd.img" "$OUTDIR/initrd.img"
echo "$KPKG" >"$OUTDIR/kernel-package"
echo "$SCRIPT_SUM" >"$STAMP"
log "built $OUTDIR/vmlinuz ($(stat -c %s "$OUTDIR/vmlinuz") bytes, $KV) and" \
    "$OUTDIR/initrd.img ($(stat -c %s "$OUTDIR/initrd.img") bytes) in $(elapsed)s"
