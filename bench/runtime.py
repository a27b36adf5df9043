#!/usr/bin/env python3
"""Start-up benchmark: capsa-runtime against runc with hyperfine, on one busybox bundle.

Owns the benchmark bundle, one private --root per runtime, the hyperfine runs and the ratio
summary. Imports from capsa only what builds the bundle; needs root, hyperfine and runc.
Usage: python3 bench/runtime.py [--runs N] [--out DIR] [--capsa PATH] [--runc PATH] [--keep]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.bundles import delete_all, make_bundle, run_runtime  # noqa: E402

# (scenario, shell command template, container to start first or None); the template gets
# {rt} runtime argv, {root} its --root, {bundle} the /bin/true bundle
SCENARIOS = (
    ("run", "{rt} --root {root} run --bundle {bundle} bench-run", None),
    ("create+start+delete", "{rt} --root {root} create --bundle {bundle} bench-life"
                            " && {rt} --root {root} start bench-life"
                            " && {rt} --root {root} delete --force bench-life", None),
    # the hot path alone: state of a running container is start-up plus one state read
    ("state (running)", "{rt} --root {root} state bench-state", "bench-state"),
)


def parse_args(argv):
    opts = {"runs": None, "out": None, "capsa": shutil.which("capsa-runtime"),
            "runc": shutil.which("runc") or "/usr/sbin/runc", "keep": False}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--keep":
            opts["keep"] = True
        elif arg in ("--runs", "--out", "--capsa", "--runc") and i + 1 < len(argv):
            i += 1
            opts[arg[2:]] = int(argv[i]) if arg == "--runs" else argv[i]
        else:
            raise SystemExit("bench/runtime.py: unknown argument %r (see the module docstring)"
                             % arg)
        i += 1
    return opts


def check_runtime(name, binary, bundle, root):
    """Run the bundle once; return None when it printed nothing and exited 0, else why not."""
    result = run_runtime(binary, "run", "--bundle", bundle, "bench-check", root=root, timeout=30)
    delete_all(binary, root)
    if result.returncode != 0:
        return "%s run exited %d: %s" % (name, result.returncode,
                                         (result.stderr.strip() or result.stdout.strip())[-300:])
    return None


def run_hyperfine(scenario, template, prepare, runtimes, bundle, tmp, opts):
    slug = "".join(c if c.isalnum() else "-" for c in scenario).strip("-")
    out = os.path.join(opts["out"], "runtime-%s.json" % slug.replace("--", "-"))
    argv = ["hyperfine", "--warmup", "3", "--export-json", out]
    if opts["runs"]:
        argv += ["--runs", str(opts["runs"])]
    if not sys.stdout.isatty():
        argv += ["--style", "basic"]
    for name, binary in runtimes:
        root = os.path.join(tmp, "root-" + name)
        argv += ["-n", name, template.format(rt=binary, root=root, bundle=bundle)]
    try:
        if prepare:
            sleeper = os.path.join(tmp, "sleeper")
            if not os.path.isdir(sleeper):
                make_bundle(tmp, ["sleep", "3600"], name="sleeper")
            for name, binary in runtimes:
                started = run_runtime(binary, "run", "--detach", "--bundle", sleeper, prepare,
                                      root=os.path.join(tmp, "root-" + name))
                if started.returncode != 0:
                    raise SystemExit("bench/runtime.py: %s run --detach failed: %s"
                                     % (name, started.stderr.strip()[-300:]))
        subprocess.run(argv, check=True)
    finally:
        for name, binary in runtimes:
            delete_all(binary, os.path.join(tmp, "root-" + name))
    with open(out) as f:
        return {r["command"]: r["median"] for r in json.load(f)["results"]}, out


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        raise SystemExit("bench/runtime.py: run as root (rootful bundles, cgroups)")
    if not shutil.which("hyperfine"):
        raise SystemExit("bench/runtime.py: no hyperfine: apt-get install hyperfine")
    if not os.access(opts["runc"], os.X_OK):
        raise SystemExit("bench/runtime.py: no runc at %s: apt-get install runc" % opts["runc"])
    tmp = tempfile.mkdtemp(prefix="capsa-bench-")
    os.chmod(tmp, 0o755)
    opts["out"] = opts["out"] or tmp
    os.makedirs(opts["out"], exist_ok=True)
    try:
        bundle = make_bundle(tmp, ["/bin/true"])
        runtimes = [("runc", opts["runc"])]
        if not opts["capsa"]:
            print("capsa-runtime is not installed (scripts/install.sh): measuring runc only")
        else:
            why = check_runtime("capsa-runtime", opts["capsa"], bundle,
                                os.path.join(tmp, "root-check"))
            if why:
                print("capsa-runtime cannot run the bundle yet, measuring runc only: " + why)
            else:
                runtimes.append(("capsa-runtime", opts["capsa"]))
        why = check_runtime("runc", opts["runc"], bundle, os.path.join(tmp, "root-check"))
        if why:
            raise SystemExit("bench/runtime.py: " + why)
        rows = []
        for scenario, template, prepare in SCENARIOS:
            medians, path = run_hyperfine(scenario, template, prepare, runtimes, bundle, tmp,
                                          opts)
            rows.append((scenario, medians, path))
        print()
        print("%-22s %12s %16s %14s" % ("scenario", "runc (ms)", "capsa (ms)", "capsa/runc"))
        for scenario, medians, path in rows:
            runc = medians["runc"]
            capsa = medians.get("capsa-runtime")
            print("%-22s %12.1f %16s %14s" % (
                scenario, runc * 1000, "-" if capsa is None else "%.1f" % (capsa * 1000),
                "-" if capsa is None else "%.2f" % (capsa / runc)))
        print("hyperfine JSON: " + ", ".join(path for _, _, path in rows))
    finally:
        if not opts["keep"]:
            keep_out = opts["out"] != tmp
            if keep_out:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                for name in os.listdir(tmp):
                    if not name.endswith(".json"):
                        full = os.path.join(tmp, name)
                        shutil.rmtree(full, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
