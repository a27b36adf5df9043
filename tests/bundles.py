"""Test helpers: busybox rootfs, OCI bundles from build_default_spec, and runtime CLI runs.

Owns nothing that persists: every path is under the caller's tmp folder, every runtime run
gets a private --root there. Used by integration, conformance and bench code, never by capsa.
"""
import json
import os
import subprocess
import sys

from capsa.busybox import build_busybox_rootfs
from capsa.runtime.specgen import build_default_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNC = "/usr/sbin/runc"
LAUNCHER = os.environ.get("CAPSA_RUNTIME", "/usr/local/bin/capsa-runtime")


def make_rootfs(tmp, name="rootfs"):
    """Build a fresh busybox rootfs at tmp/name and return its path (about 20 ms)."""
    return build_busybox_rootfs(os.path.join(str(tmp), name))


def make_bundle(tmp, args, terminal=False, mutate=None, name="bundle"):
    """Write tmp/name/{config.json,rootfs} and return the bundle folder.

    config.json is build_default_spec(args, terminal=terminal); `mutate(spec)` may change the
    spec in place (or return a new one) before it is written. A second bundle in the same tmp
    needs another `name`.
    """
    bundle = os.path.join(str(tmp), name)
    os.mkdir(bundle)
    # 0755: a container root mapped to another host uid must still reach its rootfs
    os.chmod(bundle, 0o755)
    make_rootfs(bundle)
    spec = build_default_spec(list(args), terminal=terminal)
    if mutate is not None:
        changed = mutate(spec)
        if changed is not None:
            spec = changed
    with open(os.path.join(bundle, "config.json"), "x") as f:
        json.dump(spec, f, indent=2)
    return bundle


def capsa_runtime_command():
    """argv prefix that runs capsa-runtime: the installed launcher, else this checkout."""
    if os.access(LAUNCHER, os.X_OK):
        return [LAUNCHER]
    code = ("import sys; sys.path.insert(0, %r); from capsa.runtime.cli import main; "
            "sys.exit(main())" % REPO)
    return [sys.executable, "-I", "-S", "-c", code]


def run_runtime(binary, *argv, root, input=None, timeout=60, cwd=None):
    """Run `binary --root ROOT argv...` and return the CompletedProcess (text, never raises
    on a non-zero exit). `binary` is a path or an argv prefix list; `root` is required so a
    test never touches /run/runc or /run/capsa.

    stdout/stderr go through temporary files, not pipes: after `create` or `run -d` the
    container keeps the runtime's stdio, and a pipe would block the test until it exits.
    """
    import tempfile
    prefix = [binary] if isinstance(binary, str) else list(binary)
    args = prefix + ["--root", str(root)] + [str(a) for a in argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.run(args, input=None if input is None else input.encode(),
                              stdin=subprocess.DEVNULL if input is None else None, stdout=out,
                              stderr=err, timeout=timeout, cwd=cwd)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, proc.returncode,
                                           out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


def delete_all(binary, root):
    """Force-delete every container under a private root (test teardown); return their ids."""
    listed = run_runtime(binary, "list", "--quiet", root=root)
    ids = listed.stdout.split() if listed.returncode == 0 else []
    for container in ids:
        run_runtime(binary, "delete", "--force", container, root=root)
    return ids
