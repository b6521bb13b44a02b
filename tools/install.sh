#!/bin/bash
# The production install (README.rst, "Running in production"), as root from
# a clone of the repository:
#   - a venv at PREFIX (default /opt/compute-agent; Debian's system Python is
#     externally managed, PEP 668) holding compute-agent, -ctl and -render;
#   - CONF_DIR (default /etc/compute-agent) with compute-agent.conf from the
#     installed sample (an existing one is kept) and an empty
#     compute-agent.conf.d/;
#   - the systemd unit in UNIT_DIR (default /etc/systemd/system), its paths
#     pointing at PREFIX and CONF_DIR.
# It starts nothing: edit the config, then `systemctl daemon-reload` and
# `systemctl enable --now compute-agent`.
#
# Usage: tools/install.sh [PREFIX]
#   CA_CONF_DIR  the config directory (default /etc/compute-agent)
#   CA_UNIT_DIR  where the unit goes (default /etc/systemd/system)
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${1:-/opt/compute-agent}
CONF_DIR=${CA_CONF_DIR:-/etc/compute-agent}
UNIT_DIR=${CA_UNIT_DIR:-/etc/systemd/system}

die() { echo "install.sh: $*" >&2; exit 1; }
for path in "$PREFIX" "$CONF_DIR" "$UNIT_DIR"; do
    # These end up in the unit's ExecStart (and in sed below).
    [[ $path =~ ^/[A-Za-z0-9._/-]*$ && $path != *..* ]] ||
        die "not an absolute path of letters, digits, '._/-': $path"
done
[[ $(id -u) -eq 0 || -w $(dirname "$PREFIX") ]] || die "run as root"

echo "install.sh: venv $PREFIX"
[[ -x $PREFIX/bin/python ]] || python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install -q .

SHARE=$PREFIX/share/compute-agent
echo "install.sh: config $CONF_DIR/compute-agent.conf"
install -d -m 0755 "$CONF_DIR" "$CONF_DIR/compute-agent.conf.d"
if [[ ! -e $CONF_DIR/compute-agent.conf ]]; then
    install -m 0640 "$SHARE/compute-agent.conf.sample" "$CONF_DIR/compute-agent.conf"
fi

echo "install.sh: unit $UNIT_DIR/compute-agent.service"
install -d -m 0755 "$UNIT_DIR"
unit=$(mktemp)
trap 'rm -f "$unit"' EXIT
sed -e "s|/opt/compute-agent|$PREFIX|g" -e "s|/etc/compute-agent|$CONF_DIR|g" \
    "$SHARE/systemd/compute-agent.service" >"$unit"
install -m 0644 "$unit" "$UNIT_DIR/compute-agent.service"
echo "install.sh: done; edit $CONF_DIR/compute-agent.conf, then:"
echo "    systemctl daemon-reload && systemctl enable --now compute-agent"
