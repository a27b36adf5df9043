#!/bin/sh
# The start-up time a bridge network adds, for capsa (CNI, in-process attach + detach) and for
# podman (netavark) running the same busybox image: each measured as bridge minus none.
# Needs root, hyperfine, podman, busybox-static. Leaves nothing behind (trap).
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d /tmp/capsa-bench-net.XXXXXX)
RUNS=${RUNS:-20}
cleanup() {
    python3 -c "import sys; sys.path.insert(0, '$REPO')
from capsa.engine.network.manager import NetworkManager
m = NetworkManager('$T/state'); m.cleanup_stale(live_ids=[])
[m.remove(n['name']) for n in m.list()]" || true
    [ -f "$T/podman/env.sh" ] && (. "$T/podman/env.sh"; podman rm -af >/dev/null 2>&1; podman system reset -f >/dev/null 2>&1) || true
    rm -rf "$T"
}
trap cleanup EXIT

# --- capsa -----------------------------------------------------------------------------------
python3 "$REPO/bench/network_attach.py" "$T/state" bridge     # creates the default network once
hyperfine -N -w 3 -r "$RUNS" --export-json "$T/capsa.json" \
    -n capsa-none "python3 $REPO/bench/network_attach.py $T/state none" \
    -n capsa-bridge "python3 $REPO/bench/network_attach.py $T/state bridge" >&2

# --- podman (isolated store and config, see /work/shared/notes/clients.md) ---------------------
mkdir -p "$T/podman/vartmp" "$T/bb/bin"
cat > "$T/podman/env.sh" <<ENV
export CONTAINERS_CONF=$T/podman/containers.conf
export CONTAINERS_STORAGE_CONF=$T/podman/storage.conf
export TMPDIR=$T/podman/vartmp
ENV
printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' "$T/podman/storage" "$T/podman/runroot" > "$T/podman/storage.conf"
cat > "$T/podman/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[network]
network_backend = "netavark"
network_config_dir = "$T/podman/networks"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$T/podman/events.log"
tmp_dir = "$T/podman/libpod-tmp"
runtime = "runc"
CONF
cp /bin/busybox "$T/bb/bin/busybox"
for applet in sh true; do ln -s busybox "$T/bb/bin/$applet"; done
tar -C "$T/bb" -cf "$T/bb.tar" bin
. "$T/podman/env.sh"
podman import -q "$T/bb.tar" localhost/capsa-bench-bb >/dev/null
hyperfine -N -w 2 -r "$RUNS" --export-json "$T/podman.json" \
    -n podman-none "podman run --rm --network none localhost/capsa-bench-bb /bin/true" \
    -n podman-bridge "podman run --rm --network bridge localhost/capsa-bench-bb /bin/true" >&2

python3 - "$T/capsa.json" "$T/podman.json" <<'PY'
import json, sys
def means(path):
    return {r["command"]: r["mean"] * 1000 for r in json.load(open(path))["results"]}
c, p = means(sys.argv[1]), means(sys.argv[2])
cx = c["capsa-bridge"] - c["capsa-none"]
px = p["podman-bridge"] - p["podman-none"]
print("capsa: none %.1f ms, bridge %.1f ms, bridge adds %.1f ms" % (c["capsa-none"], c["capsa-bridge"], cx))
print("podman: none %.1f ms, bridge %.1f ms, bridge adds %.1f ms" % (p["podman-none"], p["podman-bridge"], px))
print("capsa's added cost / podman's added cost = %.2f" % (cx / px if px > 0 else float("nan")))
PY
