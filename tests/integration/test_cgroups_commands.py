"""pause, resume, update, events and ps on real containers through capsa-runtime's command
line (root): the cgroup files change, the status follows, OOM kills are reported, and the
fixture proves no state folder or cgroup is left."""
import json
import os
import subprocess
import time

import pytest

from tests.bundles import capsa_runtime_command, delete_all, make_bundle, run_runtime

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups)")

RUNTIME = capsa_runtime_command()
PREFIX = "/capsa-test-cmd-%d" % os.getpid()


@pytest.fixture
def rt(tmp_path):
    root = tmp_path / "state"
    made = []

    def start(container_id, args, resources=None):
        def mutate(spec):
            spec["linux"]["cgroupsPath"] = "%s/%s" % (PREFIX, container_id)
            if resources:
                spec["linux"]["resources"] = resources
        bundle = make_bundle(tmp_path, args, mutate=mutate, name="bundle-" + container_id)
        made.append(container_id)
        result = run_runtime(RUNTIME, "run", "--detach", "--bundle", bundle, container_id,
                             root=root)
        assert result.returncode == 0, result.stderr
        return result

    def call(*argv, **kwargs):
        return run_runtime(RUNTIME, *argv, root=root, **kwargs)
    call.start = start
    call.root = root
    yield call
    delete_all(RUNTIME, root)
    assert not os.path.exists(root) or os.listdir(root) == []
    for mount in ("memory", "pids", "freezer", "cpu", "unified"):
        assert not os.path.exists("/sys/fs/cgroup/%s%s" % (mount, PREFIX))


def _status(rt, container_id):
    return json.loads(rt("state", container_id).stdout)["status"]


def _cgroup_file(controller, container_id, name):
    with open("/sys/fs/cgroup/%s%s/%s/%s" % (controller, PREFIX, container_id, name)) as handle:
        return handle.read().strip()


def test_pause_and_resume(rt):
    rt.start("p1", ["sleep", "100"])
    assert _status(rt, "p1") == "running"
    assert rt("pause", "p1").returncode == 0
    assert _status(rt, "p1") == "paused"
    assert _cgroup_file("freezer", "p1", "freezer.state") == "FROZEN"
    again = rt("pause", "p1")
    assert again.returncode != 0 and "paused, not running" in again.stderr
    assert rt("resume", "p1").returncode == 0
    assert _status(rt, "p1") == "running"
    assert rt("resume", "p1").returncode != 0


def test_update_from_flags_and_from_a_resources_file(rt, tmp_path):
    rt.start("u1", ["sleep", "100"], {"memory": {"limit": 32 << 20, "swap": 32 << 20},
                                      "pids": {"limit": 10}})
    result = rt("update", "--memory", "64m", "--memory-swap", "128m", "--pids-limit", "30",
                "--cpu-quota", "20000", "--cpu-period", "100000", "u1")
    assert result.returncode == 0, result.stderr
    assert _cgroup_file("memory", "u1", "memory.limit_in_bytes") == str(64 << 20)
    assert _cgroup_file("memory", "u1", "memory.memsw.limit_in_bytes") == str(128 << 20)
    assert _cgroup_file("pids", "u1", "pids.max") == "30"
    assert _cgroup_file("cpu", "u1", "cpu.cfs_quota_us") == "20000"
    # what podman update --cpus 0.5 --memory 64m sends
    resources = tmp_path / "resources.json"
    resources.write_text('{"memory":{"limit":67108864,"swap":134217728},'
                         '"cpu":{"quota":50000,"period":100000}}')
    assert rt("update", "--resources=%s" % resources, "u1").returncode == 0
    assert _cgroup_file("cpu", "u1", "cpu.cfs_quota_us") == "50000"
    assert rt("update", "-r", "-", "u1", input='{"pids": {"limit": 12}}').returncode == 0
    assert _cgroup_file("pids", "u1", "pids.max") == "12"
    # the stored limits follow, for the next update
    assert rt("update", "--memory", "96m", "u1").returncode == 0
    assert _cgroup_file("memory", "u1", "memory.memsw.limit_in_bytes") == str(128 << 20)


def test_update_refusals_are_one_line(rt):
    rt.start("u2", ["sleep", "100"])
    for argv, words in ((("--memory", "lots"), "--memory"),
                        (("--l3-cache-schema", "L3:0=f"), "Intel RDT"),
                        (("--cpu-quota", "10"), "cpu.quota"),
                        (("--memory-swap", "1g"), "swap")):
        result = rt("update", *argv, "u2")
        assert result.returncode != 0 and words in result.stderr, (argv, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_events_stats_and_ps(rt):
    rt.start("e1", ["sh", "-c", "sleep 100 & sleep 100 & wait"], {"pids": {"limit": 50}})
    time.sleep(0.2)
    event = json.loads(rt("events", "--stats", "e1").stdout)
    assert event["type"] == "stats" and event["id"] == "e1"
    assert event["data"]["pids"] == {"current": 3, "limit": 50}
    assert event["data"]["memory"]["usage"]["usage"] > 0
    pids = json.loads(rt("ps", "--format", "json", "e1").stdout)
    assert len(pids) == 3
    table = rt("ps", "e1", "--", "-o", "pid,comm").stdout.splitlines()
    assert table[0].split() == ["PID", "COMMAND"]
    assert sorted(int(line.split()[0]) for line in table[1:]) == sorted(pids)
    assert sorted(line.split()[1] for line in table[1:]) == ["sh", "sleep", "sleep"]


def test_events_waits_on_notifications_not_on_the_interval(rt):
    """With a 60 s interval the OOM and the container's end still show at once: the stream
    sleeps on an OOM notification fd (v1 eventfd, v2 inotify) and a pidfd of the init."""
    rt.start("o2", ["sh", "-c", "sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1; sleep 1"],
             {"memory": {"limit": 16 << 20, "swap": 16 << 20}})
    started = time.monotonic()
    proc = subprocess.Popen(RUNTIME + ["--root", str(rt.root), "events", "--interval", "60s",
                                       "o2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        kinds_of_fds = set()
        for fd in os.listdir("/proc/%d/fd" % proc.pid):
            try:
                kinds_of_fds.add(os.readlink("/proc/%d/fd/%s" % (proc.pid, fd)))
            except OSError:
                pass
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert [json.loads(line)["type"] for line in out.decode().splitlines()] == ["oom"]
    assert time.monotonic() - started < 15
    assert "anon_inode:[pidfd]" in kinds_of_fds
    assert kinds_of_fds & {"anon_inode:[eventfd]", "anon_inode:inotify"}, kinds_of_fds


def test_events_stream_reports_an_oom_kill_and_ends_with_the_container(rt):
    rt.start("o1", ["sh", "-c", "sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1; sleep 1"],
             {"memory": {"limit": 16 << 20, "swap": 16 << 20}})
    proc = subprocess.Popen(RUNTIME + ["--root", str(rt.root), "events", "--interval", "300ms",
                                       "o1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    kinds = [json.loads(line)["type"] for line in out.decode().splitlines()]
    assert proc.returncode == 0, err
    assert "oom" in kinds and "stats" in kinds
