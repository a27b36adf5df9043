#!/bin/bash
# Run the whole suite (tests/unit, tests/integration, tests/conformance) the way CI does.
# Arguments replace the default "tests" (paths, -k, -x ...). pytest's closing line stays last;
# "no tests collected" (exit 5) counts as a failure, since a suite that ran nothing proved nothing.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO" || exit 1
. "$REPO/scripts/python-env.sh"
if ! python3 -c "import pytest" 2>/dev/null; then
    echo "test.sh: $(command -v python3) has no pytest: run scripts/install.sh (pyenv's python3 first on PATH)" >&2
    exit 1
fi
# a hung test fails after 10 minutes instead of eating the 90-minute CI budget
python3 -m pytest -q -rfEs --timeout=600 "${@:-tests}"
status=$?
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests (exit 5): failing" >&2
    exit 1
fi
exit "$status"
