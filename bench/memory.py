#!/usr/bin/env python3
"""The smallest memory limit under which a busybox container still starts: capsa-runtime beside
runc on the same bundle (issue 5: runc fails at 4M; the goal is 2M or lower).

Owns one bundle and one private --root per runtime under a temp dir; runs `echo ok` under
decreasing linux.resources.memory.limit values after one warm-up run (page cache warm for
both). Needs root and runc. Usage: python3 bench/memory.py [--capsa PATH] [--runc PATH]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.bundles import capsa_runtime_command, delete_all, make_bundle  # noqa: E402

LIMITS_KIB = (8192, 4096, 3072, 2048, 1536, 1024, 768, 512, 384, 256, 128)


def starts(argv, root, bundle, kib, name):
    with open(os.path.join(bundle, "config.json")) as handle:
        spec = json.load(handle)
    spec["linux"].setdefault("resources", {})["memory"] = {"limit": kib * 1024}
    with open(os.path.join(bundle, "config.json"), "w") as handle:
        json.dump(spec, handle)
    done = subprocess.run(argv + ["--root", root, "run", "--bundle", bundle, name],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    delete_all(argv, root)
    return done.returncode == 0 and done.stdout == "ok\n"


def smallest(argv, tmp, label):
    bundle = make_bundle(tmp, ["echo", "ok"], name="bundle-" + label)
    root = os.path.join(tmp, "root-" + label)
    starts(argv, root, bundle, 65536, "warm")
    best = None
    for kib in LIMITS_KIB:
        if not starts(argv, root, bundle, kib, "m%d" % kib):
            break
        best = kib
    return best


def main(argv):
    capsa = capsa_runtime_command()
    runc = ["/usr/sbin/runc"]
    if "--capsa" in argv:
        capsa = [argv[argv.index("--capsa") + 1]]
    if "--runc" in argv:
        runc = [argv[argv.index("--runc") + 1]]
    tmp = tempfile.mkdtemp(prefix="capsa-bench-memory-")
    os.chmod(tmp, 0o755)
    try:
        results = {"capsa-runtime": smallest(capsa, tmp, "capsa"), "runc": smallest(runc, tmp, "runc")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%-14s %s" % ("runtime", "smallest memory limit that starts busybox (warm cache)"))
    for name, kib in results.items():
        print("%-14s %s" % (name, "%d KiB" % kib if kib else "none of %s KiB" % (LIMITS_KIB,)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
