#!/bin/sh
# Try conformance scenarios against capsa-runtime by hand, claimed or not, with every runtime
# call logged: each runtime is wrapped in a logger (registered in podman under its own name, so
# it stays in runtime_supports_json) that appends its argv to argv.log, copies the config.json,
# --process and --resources files it is given to captures/, then execs the real binary.
#
# usage: tests/conformance/capsa_check.sh [pytest -k expression] [capsa-runtime binary]
#   tests/conformance/capsa_check.sh test_run_rm
#   tests/conformance/capsa_check.sh "ctr_run_tty or ctr_task_exec" /tmp/my/capsa-runtime
# Stops at the first failing scenario; runc's calls for the same scenario are in the same log.
set -u
repo=$(cd "$(dirname "$0")/../.." && pwd)
log=$(mktemp -d /tmp/capsa-check-XXXXXX)
export CAPSA_CONFORMANCE_TRY=capsa-runtime CAPSA_CONFORMANCE_ARGV_LOG="$log"
if [ $# -ge 2 ]; then export CAPSA_RUNTIME="$2"; fi
select="capsa-runtime"
if [ -n "${1:-}" ]; then select="($1) and capsa-runtime"; fi
cd "$repo" || exit 1
python3 -m pytest tests/conformance -p no:cacheprovider -x -v -k "$select"
rc=$?
echo "== every runtime call, in order: $log/argv.log"
cat "$log/argv.log" 2>/dev/null
echo "== JSON the runtimes were given: $log/captures/"
ls "$log/captures" 2>/dev/null | head -20
exit $rc
