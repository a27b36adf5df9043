#!/bin/bash
# capsa engine vs podman, side by side on the same busybox image:
#   1. `run --rm busybox true` wall time (hyperfine, warmup 3) and the median ratio capsa/podman
#      (capsa's default in-process runtime, and runc as podman uses), then capsa's --trace steps.
#      Each tool runs with its own default network, a bridge for both (capsa: CNI bridge on the
#      default network `capsa`; podman: netavark's `podman`), and both again with --network none.
#   2. the host memory an idle detached container costs: PSS of capsa's monitor vs conmon
# Everything lives in a private temp folder (podman gets an isolated store, as in
# /work/shared/notes/clients.md). Usage: bash bench/engine.sh [RUNS]   (needs root)
set -euo pipefail
RUNS=${1:-20}
REPO=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d /tmp/capsa-bench-engine.XXXXXX)
trap 'cleanup' EXIT
cleanup() {
    set +e
    [ -n "${PODMAN_IDLE:-}" ] && podman rm -f "$PODMAN_IDLE" >/dev/null 2>&1
    [ -n "${CAPSA_IDLE:-}" ] && $CAPSA rm -f "$CAPSA_IDLE" >/dev/null 2>&1
    # the default network's bridge is a host link: it would outlive $T
    $CAPSA network rm capsa >/dev/null 2>&1
    # podman's overlay driver bind-mounts its overlay folder onto itself
    mountpoint -q "$T/podman/storage/overlay" && umount "$T/podman/storage/overlay"
    rm -rf "$T"
}
# the installed launcher runs Debian's interpreter isolated (#!/usr/bin/python3 -I -S)
CAPSA="/usr/bin/python3 -I -S $REPO/bench/engine_capsa.py --root $T/capsa"
export CAPSA_BENCH_REPO=$REPO

# --- podman, isolated ----------------------------------------------------------------------
mkdir -p "$T/podman/vartmp"
cat > "$T/podman/containers.conf" <<EOF
[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=1024:1024", "nproc=32768:32768"]
[network]
network_backend = "netavark"
network_config_dir = "$T/podman/networks"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$T/podman/events.log"
tmp_dir = "$T/podman/libpod-tmp"
runtime = "runc"
[engine.runtimes]
runc = ["/usr/sbin/runc"]
EOF
cat > "$T/podman/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$T/podman/storage"
runroot = "$T/podman/runroot"
EOF
export CONTAINERS_CONF=$T/podman/containers.conf CONTAINERS_STORAGE_CONF=$T/podman/storage.conf
export TMPDIR=$T/podman/vartmp
python3 -c "import sys; sys.path.insert(0, '$REPO'); from capsa.busybox import build_busybox_tar; build_busybox_tar('$T/busybox.tar')"
podman import -q --change 'CMD ["sh"]' "$T/busybox.tar" localhost/busybox:latest >/dev/null

# --- capsa: the embedded image is imported on first use ------------------------------------
$CAPSA run --rm busybox true

echo "== run --rm busybox true ($RUNS runs, warmup 3)"
# capsa: the default, capsa's runtime in-process; capsa-runc: runc underneath, as podman;
# *-none: no network on either side (the comparison before capsa's default became the bridge);
# python: the interpreter alone, the floor under any capsa command
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$T/run.json" \
    -n capsa "$CAPSA run --rm busybox true" \
    -n capsa-runc "$CAPSA --runtime runc run --rm busybox true" \
    -n podman "podman run --rm localhost/busybox true" \
    -n capsa-none "$CAPSA run --rm --network none busybox true" \
    -n podman-none "podman run --rm --network none localhost/busybox true" \
    -n python "/usr/bin/python3 -I -S -c pass"
python3 - "$T/run.json" <<'EOF'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
for name, base in (("capsa", "podman"), ("capsa-runc", "podman"), ("python", "podman"),
                   ("capsa-none", "podman-none")):
    c, p = r[name]["median"], r[base]["median"]
    print("median %s %.1f ms, %s %.1f ms, ratio %.2f" % (name, c * 1e3, base, p * 1e3, c / p))
for tool in ("capsa", "podman"):
    added = r[tool]["median"] - r[tool + "-none"]["median"]
    print("the default bridge adds %.1f ms to %s" % (added * 1e3, tool))
EOF

echo "== where capsa's time goes: median of 10 runs of run --rm --trace busybox true"
for i in $(seq 10); do $CAPSA run --rm --trace busybox true 2>&1; done | python3 -c '
import sys
steps = {}
for line in sys.stdin:
    parts = line.split(None, 3)
    if parts[:1] == ["trace"]:
        steps.setdefault(parts[3].strip(), []).append(float(parts[1]))
for name, values in steps.items():
    values.sort()
    print("%-20s %6.1f ms" % (name, values[len(values) // 2]))
'

echo "== idle detached container: host memory of its supervisor"
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
monitor_of() {
    python3 -c "import json; print(json.load(open('$T/capsa/containers/$1/state.json'))['monitor_pid'])"
}
# capsa's own monitor, measured for the decision (CAPSA_MONITOR=python forces it)
PY_IDLE=$(CAPSA_MONITOR=python $CAPSA run -d busybox sleep 1000)
sleep 1
PYMON=$(monitor_of "$PY_IDLE")
echo "capsa's own monitor pid $PYMON: PSS $(pss "$PYMON") kB, RSS $(awk '/VmRSS/ {print $2}' /proc/$PYMON/status) kB"
$CAPSA rm -f "$PY_IDLE" >/dev/null
CAPSA_IDLE=$($CAPSA run -d busybox sleep 1000)
sleep 1
MON=$(monitor_of "$CAPSA_IDLE")
PODMAN_IDLE=$(podman run -d localhost/busybox sleep 1000)
sleep 1
CONMON=$(pgrep -f "conmon.*$PODMAN_IDLE" | head -1)
echo "capsa under conmon (the default) pid $MON: PSS $(pss "$MON") kB, RSS $(awk '/VmRSS/ {print $2}' /proc/$MON/status) kB"
echo "podman conmon pid $CONMON: PSS $(pss "$CONMON") kB, RSS $(awk '/VmRSS/ {print $2}' /proc/$CONMON/status) kB"
