"""Pure pieces of the monitor, logs, records and CLI table (no root, no runtime)."""
import io
import os

import pytest

from capsa.errors import StateError
from capsa.engine import cli, logs, monitor
from capsa.engine.lifecycle import build_go_template, build_cp_target
from capsa.engine.output import build_age, build_status_text, read_timestamp
from capsa.engine.store import ContainerStore, format_time


def test_log_records_roundtrip_with_partial_lines():
    recs, rest = monitor.build_log_records("stdout", b"", b"one\ntwo\nthr", 1.5)
    assert rest == b"thr"
    recs2, rest = monitor.build_log_records("stdout", rest, b"ee", 2.0, final=True)
    assert rest == b""
    parsed = monitor.read_log_records(recs + recs2)
    assert [(p[1], p[2], p[3]) for p in parsed] == [("stdout", False, b"one"),
                                                    ("stdout", False, b"two"),
                                                    ("stdout", True, b"three")]
    assert parsed[0][0] == "1970-01-01T00:00:01.500000000Z"


def test_log_output_tail_and_timestamps():
    data = b"".join(monitor.build_log_line(s, d, p, 10.0) for s, d, p in
                    [("stdout", b"a", False), ("stderr", b"b", False), ("stdout", b"c", True),
                     ("stdout", b"d", False)])
    out = logs.build_log_output(data, None, False)
    assert out == [("stdout", b"a\n"), ("stderr", b"b\n"), ("stdout", b"cd\n")]
    assert logs.build_log_output(data, 1, False) == [("stdout", b"cd\n")]
    assert logs.build_log_output(data, 0, False) == []
    stamped = logs.build_log_output(data, 1, True)
    assert stamped[0][1].startswith(b"1970-01-01T00:00:10") and stamped[0][1].endswith(b" cd\n")
    assert logs.build_log_output(b"x\ny\nz\n", 2, False, raw=True) == [("stdout", b"y\nz\n")]
    conmon = b"2026-11-24T16:28:43.762092953+00:00 stdout F hi\n"
    assert logs.build_log_output(conmon, None, True) == [
        ("stdout", b"2026-11-24T16:28:43.762092953Z hi\n")]


@pytest.mark.parametrize("policy,code,count,stop,expected", [
    ({"name": "no"}, 1, 0, False, False),
    ({"name": "always"}, 0, 5, False, True),
    ({"name": "always"}, 0, 0, True, False),
    ({"name": "unless-stopped"}, 3, 0, False, True),
    ({"name": "on-failure", "max_retries": 0}, 0, 0, False, False),
    ({"name": "on-failure", "max_retries": 0}, 2, 9, False, True),
    ({"name": "on-failure", "max_retries": 2}, 2, 1, False, True),
    ({"name": "on-failure", "max_retries": 2}, 2, 2, False, False),
])
def test_restart_decision(policy, code, count, stop, expected):
    assert monitor.build_restart_decision(policy, code, count, stop) is expected


def test_exit_code_for_runtime_errors():
    assert monitor.build_exit_code_for_error('exec: "x": executable file not found in $PATH') == 127
    assert monitor.build_exit_code_for_error("exec /a: permission denied") == 126
    assert monitor.build_exit_code_for_error("cgroup: invalid argument") == 125


def test_store_names_are_exclusive_and_lookup_by_prefix(tmp_path):
    store = ContainerStore(str(tmp_path))
    a, b = "ab" + "0" * 62, "ac" + "0" * 62
    store.reserve(a, "web")
    store.save({"id": a, "name": "web", "created": format_time(1)})
    with pytest.raises(StateError) as exc:
        store.reserve(b, "web")
    assert "already in use" in exc.value.line()
    assert not os.path.exists(store.path(b))
    store.reserve(b, None)
    store.save({"id": b, "name": None, "created": format_time(2)})
    assert store.lookup("web")["id"] == a
    assert store.lookup("ac")["id"] == b
    with pytest.raises(StateError):
        store.lookup("a")
    with pytest.raises(StateError):
        store.lookup("zz")
    assert [r["id"] for r in store.records()] == [b, a]
    assert store.status(store.load(a)) == "created"
    store.set_state(a, status="running", pid=2 ** 22 + 7, pid_start=1)
    assert store.status(store.load(a)) == "exited"
    store.remove(store.load(a))
    with pytest.raises(StateError):
        store.lookup("web")


def test_ages_and_statuses():
    assert build_age(0.2) == "Less than a second"
    assert build_age(5) == "5 seconds"
    assert build_age(90) == "About a minute"
    assert build_age(3 * 3600) == "3 hours"
    assert read_timestamp(format_time(100.25)) == pytest.approx(100.25)
    assert build_status_text("exited", {"exit_code": 3, "finished_at": format_time(95)},
                             100) == "Exited (3) 5 seconds ago"
    assert build_status_text("created", {}, 0) == "Created"


def test_go_template_subset():
    row = {"Id": "abc", "Names": "web", "Status": "Up"}
    assert build_go_template("{{.ID}}\\t{{.Names}}", row) == "abc\tweb"
    assert build_go_template("{{json .}}", row).startswith("{")
    with pytest.raises(Exception):
        build_go_template("{{.Nope}}", row)


def test_cp_targets():
    assert build_cp_target("web:/etc/passwd") == ("web", "/etc/passwd")
    assert build_cp_target("web:") == ("web", "/")
    assert build_cp_target("/host/file") == (None, "/host/file")


def run_cli(argv, tmp_path):
    out, err = io.StringIO(), io.StringIO()
    ctx = cli.Context(str(tmp_path), stdout=out, stderr=err)
    code = cli.main(argv, ctx)
    return code, out.getvalue(), err.getvalue()


def test_cli_table_and_errors(tmp_path):
    code, out, _ = run_cli(["--help"], tmp_path)
    assert code == 0 and "run" in out and "start-all" in out
    code, out, _ = run_cli(["ps", "--help"], tmp_path)
    assert code == 0 and out.startswith("Usage: capsa ps")
    code, out, _ = run_cli(["run", "--help"], tmp_path)
    assert code == 0 and "--memory-swap" in out
    code, _, err = run_cli(["frobnicate"], tmp_path)
    assert code == 125 and "unknown command" in err
    code, _, err = run_cli(["ps", "--bogus"], tmp_path)
    assert code == 125 and "--bogus" in err
    code, _, err = run_cli(["rm", "nosuch"], tmp_path)
    assert code == 1 and "no such container: nosuch" in err
    code, out, _ = run_cli(["ps", "-a", "--format", "json"], tmp_path)
    assert code == 0 and out.strip() == "[]"
    code, _, err = run_cli(["run", "--rootfs", str(tmp_path / "missing"), "true"], tmp_path)
    assert code == 125 and "does not exist" in err
    assert not os.path.exists(tmp_path / "containers") or not os.listdir(tmp_path / "containers")


def test_group_commands_resolve():
    assert cli.build_command(["container", "ls"])[:3] == ("capsa.engine.lifecycle", "cmd_ps", "ps")
    assert cli.build_command(["image", "inspect", "x"])[1] == "cmd_image_inspect"
    assert cli.build_command(["volume", "ls"])[1] == "cmd_volume"


def test_conmon_command_line(tmp_path, monkeypatch):
    from capsa.engine import conmon
    from capsa.engine.runtimes import OciCliRuntime
    store = ContainerStore(str(tmp_path))
    record = {"id": "c" * 64, "name": "web", "tty": True, "interactive": False}
    runtime = OciCliRuntime("/usr/sbin/runc", str(tmp_path / "rt"))
    argv = conmon.build_conmon_argv("/usr/bin/conmon", store, record, runtime, "runc")
    pairs = dict(zip(argv[1::1], argv[2::1]))
    assert pairs["-r"] == "/usr/sbin/runc" and pairs["-n"] == "web"
    assert pairs["-l"] == "k8s-file:" + store.path("c" * 64, "ctr.log")
    assert "-t" in argv and "-i" not in argv
    exit_args = [argv[i + 1] for i, a in enumerate(argv) if a == "--exit-command-arg"]
    assert exit_args[-2:] == ["container-cleanup", "c" * 64]
    assert exit_args[exit_args.index("--root") + 1] == str(tmp_path)
    assert argv.count("--exit-command") == 1
    monkeypatch.setenv("CAPSA_MONITOR", "python")
    assert not conmon.use_conmon(record, runtime)


def test_runtime_log_line_reduced_to_its_message():
    from capsa.engine.conmon import build_runtime_message
    line = 'time="2026" level=error msg="runc create failed: \\"x\\" denied"\n'
    assert build_runtime_message(line) == 'runc create failed: "x" denied'
    assert build_runtime_message("plain words\n") == "plain words"


def test_rlimits_above_our_hard_limit_are_refused_early():
    import resource
    from capsa.engine.prepare import check_rlimits
    from capsa.errors import UsageError
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("this host has no finite hard RLIMIT_NOFILE")
    too_high = [{"type": "RLIMIT_NOFILE", "soft": 1, "hard": hard + 1}]
    with pytest.raises(UsageError) as exc:
        check_rlimits(too_high, ["CAP_CHOWN"])
    assert exc.value.field == "--ulimit"
    check_rlimits(too_high, ["CAP_SYS_RESOURCE"])
    check_rlimits([{"type": "RLIMIT_NOFILE", "soft": 1, "hard": hard}], [])


class FakeRuntime:
    """Runs the 'container' as a plain child process (sh), so the monitor can be unit-tested
    without root: create spawns it stopped behind a pipe, start releases it."""

    name = "fake"

    def __init__(self, script):
        self.script = script
        self.calls = []
        self.gates = {}

    def create(self, id, bundle, pid_file, console_socket=None, stdio=None):
        import subprocess
        self.calls.append("create")
        r, w = os.pipe()
        proc = subprocess.Popen(["/bin/sh", "-c", "read go; " + self.script], stdin=r,
                                stdout=stdio[1], stderr=stdio[2], close_fds=True)
        os.close(r)
        self.gates[id] = w
        with open(pid_file, "w") as f:
            f.write(str(proc.pid))
        proc.returncode = 0     # the monitor reaps it, not Popen

    def start(self, id):
        self.calls.append("start")
        os.write(self.gates[id], b"go\n")
        os.close(self.gates.pop(id))

    def delete(self, id, force=False):
        self.calls.append("delete")


def monitor_for(tmp_path, script, **record):
    from capsa.syscalls.fake import FakeKernel
    store = ContainerStore(str(tmp_path))
    id = "d" * 64
    store.reserve(id, None)
    os.mkdir(store.path(id, "bundle"))
    rec = {"id": id, "name": None, "created": format_time(0), "restart": {"name": "no"}}
    rec.update(record)
    store.save(rec)
    runtime = FakeRuntime(script)
    kernel = FakeKernel()
    return store, monitor.Monitor(store, rec, runtime, foreground=False, kernel=kernel), runtime


def test_monitor_logs_output_and_records_exit(tmp_path):
    store, mon, runtime = monitor_for(tmp_path, "echo out; echo err >&2; exit 3")
    assert mon.run() == 3
    assert runtime.calls == ["create", "start", "delete"]
    assert mon.kernel.calls_of("prctl") == [(monitor.PR_SET_CHILD_SUBREAPER, 1)]
    state = store.state(mon.id)
    assert state["status"] == "exited" and state["exit_code"] == 3
    with open(store.path(mon.id, "ctr.log"), "rb") as f:
        records = monitor.read_log_records(f.read())
    assert sorted((r[1], r[3]) for r in records) == [("stderr", b"err"), ("stdout", b"out")]


def test_monitor_restarts_on_failure_then_removes_with_rm(tmp_path):
    store, mon, runtime = monitor_for(tmp_path, "echo run; exit 1",
                                      restart={"name": "on-failure", "max_retries": 2})
    assert mon.run() == 1
    assert runtime.calls.count("create") == 3
    assert store.state(mon.id)["restart_count"] == 2
    store, mon, runtime = monitor_for(tmp_path / "rm", "exit 0", rm=True)
    assert mon.run() == 0
    assert not os.path.exists(store.path(mon.id))


def test_monitor_stop_request_prevents_restart(tmp_path):
    store, mon, runtime = monitor_for(tmp_path, "exit 0", restart={"name": "always"})
    open(store.path(mon.id, "stop-requested"), "w").close()
    assert mon.run() == 0
    assert runtime.calls.count("create") == 1


def test_restart_delay_cut_short_by_stop(tmp_path):
    import time
    store = ContainerStore(str(tmp_path))
    id = "e" * 64
    store.reserve(id, None)
    assert monitor.apply_restart_delay(store, id, 0.05) is True
    open(store.path(id, "stop-requested"), "w").close()
    t0 = time.monotonic()
    assert monitor.apply_restart_delay(store, id, 5.0) is False
    assert time.monotonic() - t0 < 1
