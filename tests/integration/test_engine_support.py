"""Helpers for the engine's integration tests: run the `capsa` CLI with a private store.

Every store, home folder and rootfs lives under the test's tmp folder; Engine.cleanup removes
every container the test made (through `capsa rm -f`) and reports leftovers.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def runtimes_under_test():
    """runc and capsa in-process (the default) always; more with CAPSA_TEST_RUNTIMES=capsa-runtime,
    /path/to/other (comma list)."""
    extra = [r for r in os.environ.get("CAPSA_TEST_RUNTIMES", "").split(",") if r]
    return ["runc", "inprocess"] + extra


class Engine:
    def __init__(self, tmp, runtime="runc", home=None, monitor=None):
        self.tmp = str(tmp)
        # CAPSA_MONITOR=python: detached containers under capsa's own monitor instead of conmon
        self.monitor = monitor
        self.root = os.path.join(self.tmp, "store")
        self.runtime = runtime
        self.home = home or os.path.join(self.tmp, "home")

    def argv(self, *args):
        return [sys.executable, "-m", "capsa.engine.cli", "--root", self.root, "--runtime",
                self.runtime, "--home", self.home] + [str(a) for a in args]

    def env(self):
        env = dict(os.environ, PYTHONPATH=REPO)
        if self.monitor:
            env["CAPSA_MONITOR"] = self.monitor
        return env

    def run(self, *args, input=None, timeout=60, check=None):
        env = self.env()
        proc = subprocess.run(self.argv(*args), input=input, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, env=env,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check is not None:
            assert proc.returncode == check, (args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def out(self, *args, **kw):
        proc = self.run(*args, check=0, **kw)
        return proc.stdout

    def popen(self, *args, **kw):
        env = self.env()
        return subprocess.Popen(self.argv(*args), cwd=REPO, env=env, **kw)

    def state(self, ref):
        return json.loads(self.out("inspect", ref))[0]["State"]

    def wait_for(self, predicate, timeout=15.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError("timed out waiting for " + what)

    def cleanup(self):
        ids = self.run("ps", "-aq", "--no-trunc").stdout.split()
        if ids:
            self.run("rm", "-f", "-v", *ids)
        try:
            self._check_left()
        finally:
            self.cleanup_networks()

    def _check_left(self):
        left = []
        containers = os.path.join(self.root, "containers")
        if os.path.isdir(containers):
            left = os.listdir(containers)
        mounts = open("/proc/self/mountinfo").read()
        assert self.root not in mounts, "mounts left under the test store"
        runc_root = os.path.join(self.root, "runtime")
        states = []
        if os.path.isdir(runc_root):
            for name in os.listdir(runc_root):
                states += [s for s in os.listdir(os.path.join(runc_root, name))
                           if not s.endswith(".log")]
        assert not left, "container folders left: %r" % left
        assert not states, "runtime state left: %r" % states

    def cleanup_networks(self):
        """Remove the store's networks (the default one appears with the first container that
        has no --network): a bridge is a host link and would outlive the tmp folder."""
        state = os.path.join(self.root, "network")
        if not os.path.isdir(os.path.join(state, "networks")):
            return
        from capsa.engine.network.manager import NetworkManager
        manager = NetworkManager(state)
        attached = sorted(os.listdir(os.path.join(state, "containers"))) \
            if os.path.isdir(os.path.join(state, "containers")) else []
        if attached:
            manager.cleanup_stale(live_ids=[])
        bridges = []
        for net in manager.list():
            bridges.append(net.get("bridge"))
            manager.remove(net["name"])
        links = os.listdir("/sys/class/net")
        assert not [b for b in bridges if b and b in links], "bridges left: %r" % bridges
        assert not attached, "network attachments left after rm -f: %r" % attached


def make_fixtures():
    """(base_rootfs, rootfs, eng) fixtures shared by the engine's integration test modules."""

    @pytest.fixture(scope="module")
    def base_rootfs(tmp_path_factory):
        from capsa.busybox import build_busybox_rootfs
        return build_busybox_rootfs(str(tmp_path_factory.mktemp("bb") / "rootfs"))

    @pytest.fixture
    def rootfs(base_rootfs, tmp_path):
        path = str(tmp_path / "rootfs")
        shutil.copytree(base_rootfs, path, symlinks=True)
        return path

    @pytest.fixture(params=runtimes_under_test())
    def eng(request, tmp_path):
        engine = Engine(tmp_path, request.param)
        yield engine
        engine.cleanup()

    return base_rootfs, rootfs, eng
