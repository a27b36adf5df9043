#!/bin/bash
# Run the whole suite (tests/unit, tests/integration, tests/conformance) the way CI does.
# Arguments replace the default "tests" (paths, -k, -x ...). pytest's own closing line stays the last line of the output;
# "no tests collected" (exit 5) counts as a failure, since a suite that ran nothing proved nothing.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO" || exit 1
python3 -m pytest -q -rfEs "${@:-tests}"
status=$?
if [ "$status" -eq 5 ]; then
    echo "test.sh: pytest collected no tests (exit 5): failing" >&2
    exit 1
fi
exit "$status"
