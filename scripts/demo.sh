#!/bin/bash
# The README demo: one container from the embedded default image, run by capsa-runtime with
# `echo hello from capsa`. CAPSA_RUNTIME=runc runs the same bundle with runc, for comparison.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
RUNTIME=${CAPSA_RUNTIME:-capsa-runtime}
ROOTFS=${CAPSA_DEFAULT_ROOTFS:-/var/lib/capsa/default-rootfs}
PYTHON=${CAPSA_PYTHON:-/usr/bin/python3}

command -v "$RUNTIME" >/dev/null || { echo "demo.sh: no $RUNTIME on PATH: run scripts/install.sh" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (the bundle's spec is a rootful one)" >&2; exit 1; }

tmp=$(mktemp -d /tmp/capsa-demo.XXXXXX)
id=demo-$$
cleanup() {
    "$RUNTIME" --root "$tmp/state" delete --force "$id" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -m 0755 "$tmp/bundle"

# The spec points at the default image in place: root.readonly keeps it unchanged. Without
# the image (install.sh not run yet) the bundle gets its own copy.
"$PYTHON" -IS - "$REPO" "$tmp/bundle" "$ROOTFS" <<'PY'
import json, os, sys
sys.path.insert(0, sys.argv[1])
from capsa.runtime.specgen import build_default_spec
bundle, rootfs = sys.argv[2], sys.argv[3]
spec = build_default_spec(["echo", "hello from capsa"], terminal=False)
if os.path.isfile(os.path.join(rootfs, "bin", "busybox")):
    spec["root"]["path"] = rootfs
else:
    from capsa.busybox import build_busybox_rootfs
    build_busybox_rootfs(os.path.join(bundle, "rootfs"))
with open(os.path.join(bundle, "config.json"), "x") as f:
    json.dump(spec, f, indent=2)
PY

"$RUNTIME" --root "$tmp/state" run --bundle "$tmp/bundle" "$id"
