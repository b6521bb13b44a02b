#!/bin/bash
# Run the test suite with the project venv.  Extra arguments go to pytest
# (default: the whole tests/ tree).  CI is passed through unchanged: when it is
# set, tests that cannot run here fail instead of skipping.
#   CA_TEST_TIMEOUT  per-test timeout in seconds (pytest-timeout), default 900
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
if [[ ! -x "$PYTHON" ]]; then
    echo "run-tests.sh: $PYTHON not found; create the venv first (see .ci/run)" >&2
    exit 1
fi

args=(-q -p no:cacheprovider)
if "$PYTHON" -c 'import pytest_timeout' >/dev/null 2>&1; then
    args+=(-o "timeout=${CA_TEST_TIMEOUT:-900}")
else
    echo "run-tests.sh: pytest-timeout not installed; running without per-test timeout" >&2
fi
if [[ $# -eq 0 ]]; then
    set -- tests
fi

echo "run-tests.sh: $PYTHON -m pytest ${args[*]} $*  (CI=${CI:-<unset>})"
rc=0
"$PYTHON" -m pytest "${args[@]}" "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "run-tests.sh: pytest collected no tests; treating that as a failure" >&2
    exit 1
fi
exit $rc
