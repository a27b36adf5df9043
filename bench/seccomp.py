#!/usr/bin/env python3
"""Start-up with the hardened seccomp profile: capsa-runtime against runc, `run` of /bin/true.

Owns one busybox bundle whose config.json is build_default_spec(hardened=True) (Docker's
capabilities, masked paths and seccomp profile), one private --root per runtime, a private
seccomp cache for capsa, and the hyperfine run. Imports from capsa only what builds the bundle.
Usage: python3 bench/seccomp.py [--runs N] [--out DIR] [--capsa PATH] [--runc PATH] [--keep]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.runtime import check_runtime, parse_args  # noqa: E402
from tests.bundles import delete_all, make_rootfs  # noqa: E402


def make_hardened_bundle(tmp):
    """tmp/bundle with the hardened spec running /bin/true (no terminal)."""
    from capsa.runtime.specgen import build_default_spec
    bundle = os.path.join(tmp, "bundle")
    os.mkdir(bundle)
    os.chmod(bundle, 0o755)
    make_rootfs(bundle)
    spec = build_default_spec(["/bin/true"], terminal=False, hardened=True)
    if not (spec.get("linux") or {}).get("seccomp"):
        raise SystemExit("bench/seccomp.py: the hardened spec has no linux.seccomp section")
    with open(os.path.join(bundle, "config.json"), "x") as f:
        json.dump(spec, f, indent=2)
    return bundle


def run_hyperfine(commands, out, opts):
    argv = ["hyperfine", "--warmup", "3", "--export-json", out]
    if opts["runs"]:
        argv += ["--runs", str(opts["runs"])]
    if not sys.stdout.isatty():
        argv += ["--style", "basic"]
    for name, command in commands:
        argv += ["-n", name, command]
    subprocess.run(argv, check=True)
    with open(out) as f:
        return dict((r["command"], r["median"]) for r in json.load(f)["results"])


def read_load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    missing = [why for ok, why in (
        (os.geteuid() == 0, "run as root (rootful bundles, cgroups)"),
        (shutil.which("hyperfine"), "no hyperfine: apt-get install hyperfine"),
        (os.access(opts["runc"], os.X_OK), "no runc at %s: apt-get install runc" % opts["runc"]),
        (opts["capsa"], "capsa-runtime is not installed (scripts/install.sh)")) if not ok]
    if missing:
        raise SystemExit("bench/seccomp.py: " + "; ".join(missing))
    tmp = tempfile.mkdtemp(prefix="capsa-bench-seccomp-")
    os.chmod(tmp, 0o755)
    opts["out"] = opts["out"] or tmp
    os.makedirs(opts["out"], exist_ok=True)
    roots = {}
    try:
        bundle = make_hardened_bundle(tmp)
        for name, binary in (("runc", opts["runc"]), ("capsa-runtime", opts["capsa"])):
            why = check_runtime(name, binary, bundle, os.path.join(tmp, "root-check"))
            if why:
                raise SystemExit("bench/seccomp.py: " + why)
        cache = os.path.join(tmp, "seccomp-cache")
        run = "{env}{rt} --root {root} run --bundle %s bench-seccomp" % bundle
        runtimes = (
            ("runc", "", opts["runc"]),
            # capsa's default: the compiled filter is read back from its cache (the warm-up
            # runs fill it); the second row compiles with libseccomp every time, as runc does
            ("capsa-runtime", "CAPSA_SECCOMP_CACHE=%s " % cache, opts["capsa"]),
            ("capsa-runtime (no cache)", "CAPSA_SECCOMP_CACHE= ", opts["capsa"]),
        )
        commands = []
        for name, env, binary in runtimes:
            roots[name] = (binary, os.path.join(tmp, "root-" + name.split()[0] +
                                                ("-nocache" if "cache" in name else "")))
            commands.append((name, run.format(env=env, rt=binary, root=roots[name][1])))
        load_before = read_load()
        out = os.path.join(opts["out"], "seccomp-run.json")
        medians = run_hyperfine(commands, out, opts)
        load_after = read_load()
        runc = medians["runc"]
        print()
        print("run /bin/true, hardened seccomp profile (median)")
        for name, _, _ in runtimes:
            print("%-26s %8.1f ms   x%.2f of runc" % (name, medians[name] * 1000,
                                                      medians[name] / runc))
        print("load average before %s, after %s; hyperfine JSON: %s"
              % (load_before, load_after, out))
    finally:
        for binary, root in roots.values():
            delete_all(binary, root)
        if not opts["keep"]:
            for name in os.listdir(tmp):
                if not (name.endswith(".json") and opts["out"] == tmp):
                    shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            if opts["out"] != tmp:
                shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
