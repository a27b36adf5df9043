"""podman 4.3 + conmon driving an OCI runtime: the lifecycle, terminals, exec, limits, security, pods.

Each scenario is a function (runtime, podman) -> observation dict, with nothing in it that
differs between two correct runtimes (ids, pids, times are reduced to facts); the tests assert
what the observation must be, and `observe` compares a claimed runtime with runc.
"""
import json
import os
import resource
import time

import pytest

from tests.conformance.clients import (IMAGE, TTY_PROBE, read_survivors, read_tty_probe, unique,
                                       wait_for)

pytestmark = pytest.mark.conformance
# PID 1 without a TERM handler ignores SIGTERM; these containers exit 0 on it and say when ready
SERVE = 'trap "echo got-TERM; exit 0" TERM; trap "echo got-HUP" HUP; echo ready; ' \
        'while :; do sleep 0.1; done'
STUBBORN = 'trap "" TERM; echo ready; while :; do sleep 0.1; done'


def start_detached(pm, script, *flags):
    """podman run -d IMAGE sh -c script; returns the name once the container printed "ready"."""
    name = unique("c")
    pm("run", "-d", "--name", name, *flags, IMAGE, "sh", "-c", script)
    wait_for(lambda: "ready" in pm.out("logs", name), what="%s to print ready" % name)
    return name


def inspect(pm, name, field):
    return pm.out("inspect", "--format", "{{%s}}" % field, name)


def run_rm(runtime, podman):
    pm = podman(runtime)
    name = unique("rm")
    echo = pm("run", "--rm", "--name", name, IMAGE, "echo", "hi")
    failing = pm("run", "--rm", IMAGE, "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    return {"echo": [echo.returncode, echo.stdout], "exists_after": pm("container", "exists", name,
            check=False).returncode, "failing": [failing.returncode, failing.stdout, failing.stderr]}


@pytest.mark.claimed("capsa-runtime")
def test_run_rm(observe, podman):
    assert observe(run_rm, podman) == {
        "echo": [0, "hi\n"], "exists_after": 1, "failing": [7, "out\n", "err\n"]}


def run_failures(runtime, podman):
    pm = podman(runtime)
    too_many = resource.getrlimit(resource.RLIMIT_NOFILE)[1] + 1
    seen = {}
    for case, culprit, argv in (
            ("missing", "/no/such/binary", [IMAGE, "/no/such/binary"]),
            ("not_executable", "/etc/passwd", [IMAGE, "/etc/passwd"]),
            ("rlimit_above_hard", "rlimit", ["--ulimit", "nofile=%d:%d" % (too_many, too_many),
                                             IMAGE, "true"])):
        done = pm("run", "--rm", *argv, check=False)
        # podman turns the runtime's error text into 127 (not found) or 126 (permission denied)
        seen[case] = [done.returncode, done.stderr.count("\n") == 1,
                      culprit in done.stderr.lower()]
    return seen


@pytest.mark.claimed("capsa-runtime")
def test_run_failures(observe, podman):
    """A process that cannot start: podman's exit code (from the runtime's error wording), one
    line naming the culprit, and nothing left (checked when the tier ends)."""
    assert observe(run_failures, podman) == {"missing": [127, True, True],
                                             "not_executable": [126, True, True],
                                             "rlimit_above_hard": [126, True, True]}


def stop_term_then_kill(runtime, podman):
    pm = podman(runtime)
    polite = start_detached(pm, SERVE)
    began = time.monotonic()
    pm("stop", "--time", "10", polite)
    polite_took = time.monotonic() - began
    stubborn = start_detached(pm, STUBBORN)
    began = time.monotonic()
    pm("stop", "--time", "1", stubborn)
    stubborn_took = time.monotonic() - began
    seen = {
        "polite": {"logs": pm.out("logs", polite), "exit": inspect(pm, polite, ".State.ExitCode"),
                   "status": inspect(pm, polite, ".State.Status"),
                   "before_timeout": polite_took < 5},
        "stubborn": {"exit": inspect(pm, stubborn, ".State.ExitCode"),
                     "status": inspect(pm, stubborn, ".State.Status"),
                     "killed_after_timeout": 1 <= stubborn_took < 8},
    }
    pm("rm", polite, stubborn)
    return seen


@pytest.mark.claimed("capsa-runtime")
def test_run_detached_logs_stop(observe, podman):
    """run -d + logs + stop: SIGTERM honoured at once; ignored, SIGKILL after the -t timeout."""
    assert observe(stop_term_then_kill, podman) == {
        "polite": {"logs": "ready\ngot-TERM", "exit": "0", "status": "exited",
                   "before_timeout": True},
        "stubborn": {"exit": "137", "status": "exited", "killed_after_timeout": True},
    }


def run_interactive(runtime, podman):
    rc, output = podman(runtime).pty("run", "-it", "--rm", IMAGE, "sh", "-c", TTY_PROBE,
                                     answer=("READY", b"hello\r"), rows=31, cols=97)
    return read_tty_probe(rc, output)


@pytest.mark.claimed("capsa-runtime")
def test_run_interactive_pty(observe, podman):
    """run -it under a real pty: a terminal inside, our window size, input reaches it, exit code."""
    assert observe(run_interactive, podman) == {
        "rc": 3, "tty": "/dev/pts/N", "size": "31 97", "got": "hello"}


def exec_in(runtime, podman):
    pm = podman(runtime)
    name = start_detached(pm, SERVE)
    try:
        rc, output = pm.pty("exec", "-it", name, "sh", "-c", TTY_PROBE,
                            answer=("READY", b"there\r"), rows=40, cols=120)
        return {
            "pid1": pm.out("exec", name, "cat", "/proc/1/cmdline").split("\0")[:2],
            "rc": pm("exec", name, "sh", "-c", "exit 5", check=False).returncode,
            "user_cwd_env": pm.out("exec", "--user", "1000", "--workdir", "/tmp", "--env",
                                   "FOO=bar", name, "sh", "-c", "echo $(id -u) $(pwd) $FOO"),
            "stdin": pm("exec", "-i", name, "cat", input="fed\n").stdout,
            "pty": read_tty_probe(rc, output),
        }
    finally:
        pm("rm", "--force", name)


@pytest.mark.claimed("capsa-runtime")
def test_exec(observe, podman):
    """exec: joins the container (its PID 1), exit code, --user/--workdir/--env, -i, and -it."""
    assert observe(exec_in, podman) == {
        "pid1": ["sh", "-c"], "rc": 5, "user_cwd_env": "1000 /tmp bar", "stdin": "fed\n",
        "pty": {"rc": 3, "tty": "/dev/pts/N", "size": "40 120", "got": "there"},
    }


def pause_unpause(runtime, podman, tmp):
    pm = podman(runtime)
    ticks = os.path.join(tmp, "ticks")
    name = start_detached(pm, "echo ready; while :; do echo t >> /data/ticks; sleep 0.02; done",
                          "--volume", "%s:/data" % tmp)

    def grows():
        size = os.path.getsize(ticks)
        time.sleep(0.4)
        return os.path.getsize(ticks) > size
    try:
        pm("pause", name)
        paused = {"status": inspect(pm, name, ".State.Status"), "ticking": grows()}
        pm("unpause", name)
        return {"paused": paused, "unpaused": {"status": inspect(pm, name, ".State.Status"),
                                               "ticking": grows()}}
    finally:
        pm("rm", "--force", "--time", "0", name)


@pytest.mark.claimed("capsa-runtime")
def test_pause_unpause(observe, podman, tmp_path):
    assert observe(pause_unpause, podman, str(tmp_path)) == {
        "paused": {"status": "paused", "ticking": False},
        "unpaused": {"status": "running", "ticking": True},
    }


LIMIT = "/sys/fs/cgroup/memory/memory.limit_in_bytes"


def update_memory(runtime, podman):
    pm = podman(runtime)
    name = start_detached(pm, SERVE, "--memory", "64m")
    try:
        before = pm.out("exec", name, "cat", LIMIT)
        pm("update", "--memory", "128m", name)
        return {"before": before, "after": pm.out("exec", name, "cat", LIMIT)}
    finally:
        pm("rm", "--force", name)


@pytest.mark.claimed("capsa-runtime")
def test_update_memory(observe, podman):
    assert observe(update_memory, podman) == {
        "before": str(64 << 20), "after": str(128 << 20)}


def kill_hup(runtime, podman):
    pm = podman(runtime)
    name = start_detached(pm, SERVE)
    try:
        pm("kill", "--signal", "HUP", name)
        logs = wait_for(lambda: "got-HUP" in pm.out("logs", name) and pm.out("logs", name),
                        what="the HUP trap")
        return {"logs": logs, "status": inspect(pm, name, ".State.Status")}
    finally:
        pm("rm", "--force", name)


@pytest.mark.claimed("capsa-runtime")
def test_kill_hup(observe, podman):
    """kill -s HUP reaches PID 1's handler and the container keeps running."""
    assert observe(kill_hup, podman) == {"logs": "ready\ngot-HUP", "status": "running"}


def rm_force(runtime, podman):
    pm = podman(runtime)
    name = start_detached(pm, STUBBORN)
    pid = int(inspect(pm, name, ".State.Pid"))
    done = pm("rm", "--force", "--time", "1", name)
    return {"rc": done.returncode, "exists": pm("container", "exists", name,
                                                check=False).returncode,
            "survivors": read_survivors([pid])}


@pytest.mark.claimed("capsa-runtime")
def test_rm_force(observe, podman):
    """rm -f of a running container that ignores SIGTERM: gone, and so is its process."""
    assert observe(rm_force, podman) == {"rc": 0, "exists": 1, "survivors": []}


def restart(runtime, podman):
    pm = podman(runtime)
    name = start_detached(pm, SERVE)
    try:
        pid = inspect(pm, name, ".State.Pid")
        pm("restart", "--time", "5", name)
        wait_for(lambda: pm.out("logs", name).count("ready") == 2, what="the restarted container")
        return {"logs": pm.out("logs", name), "status": inspect(pm, name, ".State.Status"),
                "new_pid": inspect(pm, name, ".State.Pid") != pid}
    finally:
        pm("rm", "--force", name)


@pytest.mark.claimed("capsa-runtime")
def test_restart(observe, podman):
    assert observe(restart, podman) == {
        "logs": "ready\ngot-TERM\nready", "status": "running", "new_pid": True}


LIMITS_PROBE = """
cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max
for c in memory pids; do grep -qx $$ /sys/fs/cgroup/$c/cgroup.procs && echo in-$c-cgroup; done
echo user=$(id -u):$(id -g)
touch /rootfs-file 2>&1
echo written > /data/file && echo volume-ok
"""


def limits(runtime, podman, tmp):
    os.chmod(tmp, 0o777)
    pm = podman(runtime)
    done = pm("run", "--rm", "--memory", "64m", "--pids-limit", "50", "--read-only",
              "--volume", "%s:/data" % tmp, "--user", "1000:1000", IMAGE, "sh", "-c", LIMITS_PROBE)
    st = os.stat(os.path.join(tmp, "file"))
    return {"out": done.stdout.splitlines(), "file_owner": [st.st_uid, st.st_gid]}


@pytest.mark.claimed("capsa-runtime")
def test_limits_volume_user_readonly(observe, podman, tmp_path):
    """--memory, --pids-limit, --read-only, -v and --user, as the container sees them."""
    assert observe(limits, podman, str(tmp_path)) == {
        "out": [str(64 << 20), "50", "in-memory-cgroup", "in-pids-cgroup", "user=1000:1000",
                "touch: /rootfs-file: Read-only file system", "volume-ok"],
        "file_owner": [1000, 1000]}


CAPS = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
        "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
        "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
        "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
        "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP")
SECURITY_PROBE = """
grep -E '^(CapEff|CapBnd|Seccomp):' /proc/self/status
chown 1000 /etc/hostname 2>&1; echo chown=$?
kill -0 1 && echo kill-ok
mkdir /tmp/d 2>&1; echo mkdir=$?
"""


def read_caps(mask):
    bits = int(mask, 16)
    return sorted(name for i, name in enumerate(CAPS) if bits >> i & 1)


def caps_seccomp(runtime, podman, tmp):
    profile = os.path.join(tmp, "deny-mkdir.json")
    with open(profile, "w") as f:
        json.dump({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}]}, f)
    out = podman(runtime).out("run", "--rm", "--cap-drop", "CHOWN", "--cap-drop", "NET_RAW",
                              "--security-opt", "seccomp=" + profile, IMAGE, "sh", "-c",
                              SECURITY_PROBE)
    seen = dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)
    return {"eff": read_caps(seen.pop("CapEff")), "bnd": read_caps(seen.pop("CapBnd")),
            "seccomp": seen.pop("Seccomp"),
            "rest": [line for line in out.splitlines() if ":\t" not in line]}


@pytest.mark.claimed("capsa-runtime")
def test_cap_drop_seccomp(observe, podman, tmp_path):
    """--cap-drop removes exactly the named capabilities; a custom seccomp profile's errno holds."""
    seen = observe(caps_seccomp, podman, str(tmp_path))
    assert seen["eff"] == seen["bnd"]
    assert "KILL" in seen["eff"] and "CHOWN" not in seen["eff"] and "NET_RAW" not in seen["eff"]
    assert seen["seccomp"] == "2"
    assert seen["rest"] == [
        "chown: /etc/hostname: Operation not permitted", "chown=1", "kill-ok",
        "mkdir: can't create directory '/tmp/d': Operation not supported", "mkdir=1"]


NS_PROBE = "hostname; for ns in net ipc uts pid; do readlink /proc/self/ns/$ns; done"


def pod(runtime, podman):
    pm = podman(runtime)
    name = unique("pod")
    pm("pod", "create", "--name", name, "--network", "none")
    try:
        member = start_detached(pm, SERVE, "--pod", name)
        first = pm.out("exec", member, "sh", "-c", NS_PROBE).splitlines()
        second = pm.out("run", "--rm", "--pod", name, IMAGE, "sh", "-c", NS_PROBE).splitlines()
        return {"hostname": [first[0] == name, second[0] == name],
                "same_net_ipc_uts": first[1:4] == second[1:4], "same_pid": first[4] == second[4],
                "infra_running": inspect(pm, name, ".State") == "Running"}
    finally:
        pm("pod", "rm", "--force", "--time", "1", name)


@pytest.mark.claimed("capsa-runtime")
def test_pod(observe, podman):
    """Two containers of a pod share its infra container's network, ipc and uts namespaces."""
    assert observe(pod, podman) == {"hostname": [True, True], "same_net_ipc_uts": True,
                                    "same_pid": False, "infra_running": True}
