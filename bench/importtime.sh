#!/bin/bash
# Import cost of capsa-runtime's hot-path commands, as the launcher runs them
# (/usr/bin/python3 -IS): per command, how many modules load, their summed import time, and the
# five costliest. Each command runs against an empty private --root (it fails: "does not exist"),
# which still imports everything that command needs. Usage: bash bench/importtime.sh [cmd ...]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PYTHON=${CAPSA_PYTHON:-/usr/bin/python3}
commands=("$@")
[ ${#commands[@]} -gt 0 ] || commands=(state start kill delete create run list)

tmp=$(mktemp -d /tmp/capsa-importtime.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

for cmd in "${commands[@]}"; do
    case $cmd in
        list) args=(list) ;;
        create|run) args=("$cmd" --bundle "$tmp/no-bundle" bench-x) ;;
        *) args=("$cmd" bench-x) ;;
    esac
    "$PYTHON" -IS -X importtime -c \
        'import sys; sys.path.insert(0, sys.argv[1]); sys.argv = ["capsa-runtime"] + sys.argv[2:]
from capsa.runtime.cli import main; main()' \
        "$REPO" --root "$tmp/root" "${args[@]}" >/dev/null 2>"$tmp/$cmd.log" || true
    "$PYTHON" -IS - "$tmp/$cmd.log" "$cmd" <<'PY'
import sys
rows = []
errors = []
for line in open(sys.argv[1]):
    if not line.startswith("import time:"):
        errors.append(line.rstrip())
        continue
    parts = line[len("import time:"):].split("|")
    if not parts[0].strip().isdigit():
        continue
    rows.append((int(parts[0]), parts[2].strip()))
total = sum(us for us, _ in rows)
top = sorted(rows, reverse=True)[:5]
capsa = sum(1 for _, name in rows if name.startswith("capsa"))
print("%-7s %3d modules (%2d capsa) %6.1f ms  top: %s" % (
    sys.argv[2], len(rows), capsa, total / 1000.0,
    ", ".join("%s %.1f" % (name, us / 1000.0) for us, name in top)))
if any("Traceback" in e for e in errors):
    print("        traceback: " + " / ".join(errors[-2:]))
PY
done
