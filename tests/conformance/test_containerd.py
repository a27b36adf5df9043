"""containerd 1.6 (containerd-shim-runc-v2, driven by ctr) using an OCI runtime via --runc-binary.

Scenarios are (runtime, ctr) -> observation dict, as in test_podman.py. Detached tasks run with
--null-io: nobody reads their fifos once ctr has returned.
"""
import contextlib
import os
import re

import pytest

from tests.conformance.clients import (IMAGE, TTY_PROBE, read_survivors, read_tty_probe, unique,
                                       wait_for)

pytestmark = pytest.mark.conformance
BUSY = "sleep 1000 & sleep 1000 & wait"


def read_tasks(ctr):
    """{task id: (pid, status)} from `ctr task ls`."""
    rows = [line.split() for line in ctr.out("task", "ls").splitlines()[1:]]
    return {row[0]: (int(row[1]), row[2]) for row in rows if len(row) == 3}


def read_task_pids(ctr, name):
    """The host pids `ctr task ps` lists (the runtime's `ps --format json`)."""
    return [int(line.split()[0]) for line in ctr.out("task", "ps", name).splitlines()[1:]]


def read_family(pid):
    """pid and all its descendants (host pids), from /proc/<pid>/task/<tid>/children."""
    family, todo = [], [pid]
    while todo:
        pid = todo.pop()
        family.append(pid)
        try:
            for tid in os.listdir("/proc/%d/task" % pid):
                with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:  # exited meanwhile: the caller polls again
            pass
    return sorted(family)


@contextlib.contextmanager
def busy_task(c):
    """A detached task running BUSY; yields (name, its three host pids read from /proc, so that
    only the scenario about `ctr task ps` depends on the runtime's ps)."""
    name = unique("t")
    c.client("run", "-d", "--null-io", *c.run, IMAGE, name, "sh", "-c", BUSY)
    try:
        init = read_tasks(c.client)[name][0]
        yield name, wait_for(lambda: len(read_family(init)) == 3 and read_family(init),
                             what="three processes in " + name)
    finally:
        c.client("task", "delete", "--force", name, check=False)
        c.client("container", "delete", name)


def run_rm(runtime, ctr):
    c = ctr(runtime)
    name = unique("r")
    echo = c.client("run", "--rm", *c.run, IMAGE, name, "echo", "hi-ctr")
    failing = c.client("run", "--rm", *c.run, IMAGE, unique("r"), "sh", "-c", "echo out; exit 3",
                       check=False)
    broken = unique("r")
    missing = c.client("run", "--rm", *c.run, IMAGE, broken, "/no/such/binary", check=False)
    left = set(c.client.out("container", "ls", "--quiet").split())
    for container in left & {name, broken}:
        c.client("container", "delete", container)
    return {"echo": [echo.returncode, echo.stdout], "failing": [failing.returncode, failing.stdout],
            "missing": [missing.returncode, "/no/such/binary" in missing.stderr],
            "left": {"echo": name in left, "missing": broken in left}}


@pytest.mark.claimed("capsa-runtime")
def test_ctr_run_rm(observe, ctr):
    """ctr run --rm --runc-binary: output, exit status, a create failure naming the missing
    binary, and the containers are gone."""
    assert observe(run_rm, ctr) == {"echo": [0, "hi-ctr\n"], "failing": [3, "out\n"],
                                    "missing": [1, True],
                                    "left": {"echo": False, "missing": False}}


def run_tty(runtime, ctr):
    c = ctr(runtime)
    return read_tty_probe(*c.client.pty("run", "--rm", "-t", *c.run, IMAGE, unique("r"), "sh",
                                        "-c", TTY_PROBE, answer=("READY", b"typed\r"), rows=33,
                                        cols=91))


@pytest.mark.claimed("capsa-runtime")
def test_ctr_run_tty(observe, ctr):
    """ctr run -t under a real pty: console socket, window size, input, exit status."""
    assert observe(run_tty, ctr) == {"rc": 3, "tty": "/dev/pts/N", "size": "33 91", "got": "typed"}


def exec_tty(runtime, ctr):
    c = ctr(runtime)
    with busy_task(c) as (name, _):
        plain = c.client("task", "exec", *c.fifo, "--exec-id", "plain", "--cwd", "/tmp", "--user",
                         "1000", name, "sh", "-c", "echo $(id -u) $(pwd); exit 6", check=False)
        rc, output = c.client.pty("task", "exec", *c.fifo, "-t", "--exec-id", "tty", name, "sh",
                                  "-c", TTY_PROBE, answer=("READY", b"again\r"), rows=25, cols=70)
        return {"plain": [plain.returncode, plain.stdout], "tty": read_tty_probe(rc, output)}


@pytest.mark.claimed("capsa-runtime")
def test_ctr_task_exec(observe, ctr):
    """ctr task exec (--cwd, --user, exit status) and ctr task exec -t under a real pty."""
    assert observe(exec_tty, ctr) == {
        "plain": [6, "1000 /tmp\n"],
        "tty": {"rc": 3, "tty": "/dev/pts/N", "size": "25 70", "got": "again"}}


def ps_pause_resume(runtime, ctr):
    c = ctr(runtime)
    with busy_task(c) as (name, pids):
        listed = sorted(read_task_pids(c.client, name))
        c.client("task", "pause", name)
        paused = read_tasks(c.client)[name][1]
        c.client("task", "resume", name)
        return {"ps_lists_all": listed == pids, "paused": paused,
                "resumed": read_tasks(c.client)[name][1]}


@pytest.mark.claimed("capsa-runtime")
def test_ctr_ps_pause_resume(observe, ctr):
    """ctr task ps lists every process of the container; pause/resume change its status."""
    assert observe(ps_pause_resume, ctr) == {"ps_lists_all": True, "paused": "PAUSED",
                                             "resumed": "RUNNING"}


def kill_all(runtime, ctr):
    c = ctr(runtime)
    with busy_task(c) as (name, pids):
        c.client("task", "kill", "--all", "--signal", "KILL", name)
        status = wait_for(lambda: read_tasks(c.client)[name][1] == "STOPPED" and "STOPPED",
                          what="%s to stop" % name)
        deleted = c.client("task", "delete", name)
        return {"status": status, "alive": read_survivors(pids),
                "delete": re.findall(r"exit code (\d+)", deleted.stderr)}


@pytest.mark.claimed("capsa-runtime")
def test_ctr_task_kill_all(observe, ctr):
    """ctr task kill -a -s KILL reaches every process; the task stops with status 137."""
    assert observe(kill_all, ctr) == {"status": "STOPPED", "alive": [], "delete": ["137"]}


def delete_force(runtime, ctr):
    c = ctr(runtime)
    with busy_task(c) as (name, pids):
        done = c.client("task", "delete", "--force", name)
        return {"rc": done.returncode, "listed": name in read_tasks(c.client),
                "alive": read_survivors(pids)}


@pytest.mark.claimed("capsa-runtime")
def test_ctr_task_delete_force(observe, ctr):
    """ctr task delete --force of a running task: no task, no process left."""
    assert observe(delete_force, ctr) == {"rc": 0, "listed": False, "alive": []}
