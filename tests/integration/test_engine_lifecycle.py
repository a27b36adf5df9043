"""Container lifecycle through `capsa` and a real runtime: create/start/stop/restart/kill/rm,
ps, logs of detached containers, --rm and --restart handled by the monitor, exec, inspect,
top, stats, wait, cp, pause. Needs root."""
import json
import os
import signal
import time

import pytest

from tests.integration.test_engine_support import Engine, make_fixtures, runtimes_under_test

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups)")


base_rootfs, rootfs, _eng = make_fixtures()


@pytest.fixture(params=[(r, m) for r in runtimes_under_test() for m in ("conmon", "python")],
                ids=lambda p: p[0] + "-" + p[1])
def eng(request, tmp_path):
    """Every lifecycle scenario under conmon and under capsa's own monitor."""
    from capsa.engine.runtimes import find_binary
    runtime, monitor = request.param
    if monitor == "conmon" and find_binary("conmon") is None:
        pytest.skip("conmon is not installed on this host")
    engine = Engine(tmp_path, runtime, monitor=monitor)
    yield engine
    engine.cleanup()


def status(eng, ref):
    return eng.state(ref)["Status"]


def test_detached_logs_after_exit_and_ps(eng, rootfs):
    cid = eng.out("run", "-d", "--name", "d1", "--rootfs", rootfs, "sh", "-c",
                  "echo out1; echo err1 >&2; echo out2; exit 4").strip()
    assert len(cid) == 64
    eng.wait_for(lambda: status(eng, "d1") == "exited", what="d1 to exit")
    assert eng.out("wait", "d1").strip() == "4"
    proc = eng.run("logs", "d1", check=0)
    assert proc.stdout == "out1\nout2\n" and proc.stderr == "err1\n"
    # stdout and stderr are separate pipes: only each stream's own order is defined
    tail = eng.run("logs", "--tail", "1", "d1", check=0)
    assert tail.stdout + tail.stderr in ("out2\n", "err1\n")
    stamped = eng.out("logs", "-t", "d1").splitlines()
    assert stamped[0].endswith(" out1") and stamped[0][:4].isdigit()
    assert eng.out("ps", "-q") == ""
    rows = json.loads(eng.out("ps", "-a", "--format", "json"))
    assert rows[0]["Names"] == "d1" and rows[0]["ExitCode"] == 4
    assert rows[0]["Status"].startswith("Exited (4)")
    assert eng.out("ps", "-a", "--format", "{{.Names}} {{.State}}") == "d1 exited\n"


def test_logs_follow_until_exit(eng, rootfs):
    eng.out("run", "-d", "--name", "f1", "--rootfs", rootfs, "sh", "-c",
            "for i in 1 2 3; do echo line$i; sleep 0.2; done")
    proc = eng.run("logs", "-f", "f1", check=0, timeout=20)
    assert proc.stdout == "line1\nline2\nline3\n"


def test_rm_flag_on_detached_cleans_up(eng, rootfs):
    cid = eng.out("run", "-d", "--rm", "--rootfs", rootfs, "sh", "-c", "sleep 0.3").strip()
    folder = os.path.join(eng.root, "containers", cid)
    assert os.path.isdir(folder)
    eng.wait_for(lambda: not os.path.exists(folder), what="--rm cleanup")
    assert eng.out("ps", "-aq") == ""


def test_restart_on_failure_restarts_then_gives_up(eng, rootfs):
    eng.out("run", "-d", "--name", "r1", "--restart", "on-failure:2", "--rootfs", rootfs,
            "sh", "-c", "echo run; exit 1")

    def settled():
        st = eng.state("r1")
        return st["Status"] == "exited" and st.get("restart_count") == 2 and \
            not _alive(st.get("monitor_pid"))
    eng.wait_for(settled, timeout=20, what="two restarts")
    assert eng.out("logs", "r1") == "run\nrun\nrun\n"
    assert eng.state("r1")["exit_code"] == 1


def test_restart_always_then_stop_is_final(eng, rootfs):
    eng.out("run", "-d", "--name", "r2", "--restart", "always", "--rootfs", rootfs,
            "sh", "-c", "echo tick; sleep 0.2")
    eng.wait_for(lambda: eng.out("logs", "r2").count("tick") >= 3, timeout=20,
                 what="three runs")
    eng.out("stop", "-t", "1", "r2")
    count = eng.out("logs", "r2").count("tick")
    time.sleep(0.8)
    assert eng.out("logs", "r2").count("tick") == count
    assert status(eng, "r2") == "exited"


def _alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_create_start_stop_restart_kill_rm(eng, rootfs):
    cid = eng.out("create", "--name", "c1", "--rootfs", rootfs, "--stop-signal", "USR1",
                  "sh", "-c", "trap 'echo got-usr1; exit 0' USR1; echo started; "
                  "while true; do sleep 0.1; done").strip()
    assert status(eng, "c1") == "created"
    assert eng.out("ps", "-a", "-q", "--no-trunc").strip() == cid
    assert eng.out("start", "c1") == "c1\n"
    eng.wait_for(lambda: "started" in eng.out("logs", "c1"), what="start")
    assert status(eng, "c1") == "running"
    proc = eng.run("rm", "c1", check=1)
    assert "stop it first" in proc.stderr
    eng.out("stop", "-t", "5", "c1")
    assert status(eng, "c1") == "exited"
    assert "got-usr1" in eng.out("logs", "c1")
    assert eng.state("c1")["exit_code"] == 0
    eng.out("restart", "c1")
    eng.wait_for(lambda: eng.out("logs", "c1").count("started") == 2, what="restart")
    eng.out("kill", "-s", "KILL", "c1")
    eng.wait_for(lambda: status(eng, "c1") == "exited", what="kill")
    assert eng.state("c1")["exit_code"] == 137
    eng.run("kill", "c1", check=1)
    eng.out("rm", "c1")
    eng.run("inspect", "c1", check=1)


def test_rm_force_running(eng, rootfs):
    eng.out("run", "-d", "--name", "rf", "--rootfs", rootfs, "sleep", "60")
    t0 = time.monotonic()
    eng.out("rm", "-f", "rf")
    assert time.monotonic() - t0 < 10
    assert eng.out("ps", "-aq") == ""


def test_exec_flags(eng, rootfs):
    eng.out("run", "-d", "--name", "ex", "-e", "BASE=1", "--rootfs", rootfs, "sleep", "60")
    assert eng.out("exec", "ex", "echo", "hi") == "hi\n"
    out = eng.out("exec", "-e", "X=2", "-w", "/tmp", "-u", "1000", "ex", "sh", "-c",
                  "echo $BASE $X $(pwd) $(id -u)")
    assert out.split() == ["1", "2", "/tmp", "1000"]
    eng.run("exec", "ex", "sh", "-c", "exit 9", check=9)
    eng.run("exec", "ex", "nosuch", check=127)
    assert eng.out("exec", "-i", "ex", "cat", input="via stdin\n") == "via stdin\n"
    assert eng.out("exec", "-t", "ex", "tty").strip().startswith("/dev/pts/")
    eng.out("exec", "-d", "ex", "sh", "-c", "echo detached > /tmp/d")
    eng.wait_for(lambda: eng.run("exec", "ex", "cat", "/tmp/d").stdout == "detached\n",
                 what="detached exec")
    eng.out("stop", "-t", "0", "ex")
    eng.run("exec", "ex", "true", check=125)


def test_inspect_top_stats_wait_cp_pause(eng, rootfs, tmp_path):
    eng.out("run", "-d", "--name", "ob", "-m", "64m", "--rootfs", rootfs, "sleep", "60")
    info = json.loads(eng.out("inspect", "ob"))[0]
    assert info["Name"] == "ob" and info["State"]["Status"] == "running"
    assert info["Spec"]["linux"]["resources"]["memory"]["limit"] == 64 << 20
    assert eng.out("inspect", "-f", "{{.Name}}", "ob") == "ob\n"
    top = eng.out("top", "ob")
    assert "sleep 60" in top and str(info["State"]["pid"]) in top
    stats = json.loads(eng.out("stats", "--no-stream", "--format", "json", "ob"))
    assert stats[0]["Name"] == "ob" and stats[0]["MemLimit"] == 64 << 20 and stats[0]["PIDs"] == 1
    (tmp_path / "up.txt").write_text("uploaded\n")
    eng.out("cp", str(tmp_path / "up.txt"), "ob:/tmp/")
    assert eng.out("exec", "ob", "cat", "/tmp/up.txt") == "uploaded\n"
    eng.out("exec", "ob", "sh", "-c", "echo made-inside > /tmp/made")
    eng.out("cp", "ob:/tmp/made", str(tmp_path / "made"))
    assert (tmp_path / "made").read_text() == "made-inside\n"
    eng.run("cp", "ob:/../../etc/shadow", str(tmp_path / "x"), check=125)
    eng.out("pause", "ob")
    assert status(eng, "ob") == "paused"
    eng.out("unpause", "ob")
    assert status(eng, "ob") == "running"
    waiter = eng.popen("wait", "ob", stdout=-1, text=True)
    eng.out("kill", "ob")
    assert waiter.communicate(timeout=20)[0].strip() == "137"


def test_names_are_unique(eng, rootfs):
    eng.out("create", "--name", "same", "--rootfs", rootfs, "true")
    proc = eng.run("create", "--name", "same", "--rootfs", rootfs, "true", check=125)
    assert "already in use" in proc.stderr
    assert len(eng.out("ps", "-aq").split()) == 1


def test_foreground_run_forwards_signals(eng, rootfs):
    proc = eng.popen("run", "--rm", "--rootfs", rootfs, "sh", "-c",
                     "trap 'echo term; exit 5' TERM; echo ready; while true; do sleep 0.1; done",
                     stdout=-1, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert out == "term\n" and proc.returncode == 5
