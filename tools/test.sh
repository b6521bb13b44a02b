#!/bin/bash
# The test command (README.rst): run as root on a fresh Debian 12 / Ubuntu
# host from a clone of the repository.  Installs system packages, starts
# RabbitMQ/libvirt/OVS without systemd, creates the venv, installs the project
# with its test extras, builds the test guest and runs the whole test suite
# (extra arguments go to pytest, e.g. tests/unit).
set -euo pipefail
cd "$(dirname "$0")/.."

export CA_TEST_CACHE="${CA_TEST_CACHE:-/var/tmp/compute-agent-test-cache}"

T0=$(date +%s)
step() { echo "=== .ci/run [$(( $(date +%s) - T0 ))s] $*"; }

step "system packages"
tools/install-system-packages.sh

step "services"
tools/start-services.sh

step "python venv"
if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -U pip
.venv/bin/pip install -q -e '.[test]'

step "docs"
# Same command as tox -e docs: a warning fails the run.
.venv/bin/pip install -q -r docs/requirements.txt
.venv/bin/sphinx-build -q -W --keep-going -b html docs/source docs/build/html

step "test guest"
tools/build-test-guest.sh "$CA_TEST_CACHE/guest"

step "tests"
rc=0
tools/run-tests.sh "$@" || rc=$?
step "done (exit $rc)"
exit $rc
