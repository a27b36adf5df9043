"""host._spawn: plugins and iptables run through os.posix_spawn with pipes, without subprocess."""
import os
import subprocess
import sys
import time

from capsa.engine.network import host

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_large_stdin_and_stdout_flow_both_ways_without_deadlock():
    data = b"x" * 300000 + b"\n"   # beyond a 64 KB pipe buffer, both ways at once
    rc, out, err = host._spawn(["cat"], data).wait()
    assert (rc, out, err) == (0, data, b"")


def test_exit_status_stderr_environment_and_a_signal():
    script = 'echo "$CNI_COMMAND"; echo oops >&2; exit 3'
    rc, out, err = host._spawn(["/bin/sh", "-c", script], b"", {"CNI_COMMAND": "DEL"}).wait()
    assert (rc, out, err) == (3, b"DEL\n", b"oops\n")
    assert host._spawn(["/bin/sh", "-c", "kill -9 $$"]).wait()[0] == -9


def test_a_missing_program_is_126_and_a_hung_one_is_killed(monkeypatch):
    rc, out, err = host._spawn(["/nonexistent/plugin"]).wait()
    assert rc == 126 and b"No such file" in err
    monkeypatch.setattr(host, "PLUGIN_TIMEOUT", 0.2)
    rc, out, err = host._spawn(["/bin/sh", "-c", "sleep 30"]).wait()
    assert rc == 124 and b"timed out" in err


def test_the_child_gets_no_fd_but_its_three_pipes():
    keep = os.open("/dev/null", os.O_RDONLY)
    # as if inherited from a parent without close-on-exec
    os.set_inheritable(keep, True)
    try:
        rc, out, _ = host._spawn(["/bin/sh", "-c", "ls /proc/self/fd"]).wait()
    finally:
        os.close(keep)
    # 0, 1, 2 and the fd ls opened to read the folder
    assert rc == 0 and sorted(int(n) for n in out.split()) == [0, 1, 2, 3]


def test_an_abandoned_child_keeps_running_and_is_reaped_by_a_later_spawn():
    child = host._spawn(["/bin/sh", "-c", "sleep 0.2"])
    assert child.running()
    child.abandon()
    assert child.pid in host._ABANDONED
    time.sleep(0.4)
    host._spawn(["true"]).wait()
    assert child.pid not in host._ABANDONED
    try:
        os.waitpid(child.pid, os.WNOHANG)
        assert False, "still a child of ours"
    except ChildProcessError:
        pass


def test_wait_after_running_saw_the_exit_still_gives_the_status():
    child = host._spawn(["/bin/sh", "-c", "echo done; exit 4"])
    time.sleep(0.2)
    assert not child.running()
    assert child.wait() == (4, b"done\n", b"")


def test_no_fds_left_for_the_pipes_is_126_not_a_traceback():
    script = ("import os, resource, sys; sys.path.insert(0, %r)\n"
              "from capsa.engine.network import host\n"
              "n = len(os.listdir('/proc/self/fd'))\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (n + 2, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
              "rc, out, err = host._spawn(['true']).wait()\n"
              "print(rc, err.decode(), len(os.listdir('/proc/self/fd')) - n)\n") % REPO
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    rc, rest = done.stdout.split(" ", 1)
    # no fd leaked by the pipes made before the failure
    assert rc == "126" and "Too many open files" in rest and rest.split()[-1] == "0"
