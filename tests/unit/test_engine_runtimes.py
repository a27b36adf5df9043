"""The runtime interface: the exact runc command lines OciCliRuntime runs, how it reports a
runtime's errors, and build_runtime's choices (a fake runtime script; no root)."""
import os

import pytest

from capsa.errors import ContainerError, StateError, UsageError
from capsa.engine.runtimes import InProcessRuntime, OciCliRuntime, build_runtime, \
    read_runtime_error

FAKE = """#!/bin/sh
echo "$@" >> "%(log)s"
case "$*" in
  *" state "*) echo '{"id": "c1", "status": "running", "pid": 42}'; exit 0 ;;
  *" create "*fail*) for a in "$@"; do case "$prev" in --log) L="$a";; esac; prev="$a"; done
                   echo '{"level":"error","msg":"create said no"}' > "$L"; exit 1 ;;
  *" kill "*) echo "kill went wrong" >&2; exit 1 ;;
esac
exit 0
"""


@pytest.fixture
def fake(tmp_path):
    log = tmp_path / "argv.log"
    script = tmp_path / "fakerunc"
    script.write_text(FAKE % {"log": log})
    script.chmod(0o755)
    return OciCliRuntime(str(script), str(tmp_path / "root")), log


def lines(log):
    return [l.split() for l in log.read_text().splitlines()]


def test_command_lines_are_runcs(fake, tmp_path):
    rt, log = fake
    rt.create("c1", "/b", "/p.pid", console_socket="/s.sock")
    rt.start("c1")
    rt.delete("c1", force=True)
    rt.pause("c1")
    rt.resume("c1")
    rt.update("c1", {"memory": {"limit": 1}})
    assert rt.exec("c1", "/proc.json", "/e.pid", detach=False) == 0
    got = lines(log)
    root = ["--root", str(tmp_path / "root"), "--log"]
    for argv in got:
        assert argv[:3] == root and argv[4:6] == ["--log-format", "json"]
    verbs = [argv[6:] for argv in got]
    assert verbs[0] == ["create", "--bundle", "/b", "--pid-file", "/p.pid", "--console-socket",
                        "/s.sock", "c1"]
    assert verbs[1] == ["start", "c1"]
    assert verbs[2] == ["delete", "--force", "c1"]
    assert verbs[3] == ["pause", "c1"] and verbs[4] == ["resume", "c1"]
    assert verbs[5][:2] == ["update", "--resources"] and verbs[5][3] == "c1"
    assert verbs[6] == ["exec", "--process", "/proc.json", "--pid-file", "/e.pid", "c1"]
    # the --resources file is gone afterwards
    assert not os.path.exists(verbs[5][2])


def test_errors_come_from_the_json_log_or_stderr(fake):
    rt, log = fake
    with pytest.raises(ContainerError) as exc:
        rt.create("fail", "/b", "/p")
    assert exc.value.message == "create said no"
    with pytest.raises(ContainerError) as exc:
        rt.kill("c1", 9, all=True)
    assert exc.value.message == "kill went wrong"
    assert lines(log)[-1][6:] == ["kill", "--all", "c1", "9"]
    assert rt.state("c1")["pid"] == 42


def test_read_runtime_error(tmp_path):
    log = tmp_path / "log.json"
    log.write_text('{"level":"warning","msg":"meh"}\n{"level":"error","msg":"real"}\n')
    assert read_runtime_error(str(log)) == "real"
    assert read_runtime_error(str(tmp_path / "missing")) is None


def test_build_runtime_choices(tmp_path, fake):
    rt, _ = fake
    assert build_runtime(rt.binary, str(tmp_path)).binary == rt.binary
    assert build_runtime(rt.binary, str(tmp_path)).root == str(tmp_path / "runtime" / "fakerunc")
    assert isinstance(build_runtime("inprocess", str(tmp_path)), InProcessRuntime)
    with pytest.raises(UsageError):
        build_runtime("no-such-runtime-anywhere", str(tmp_path))
    with pytest.raises(UsageError):
        build_runtime(str(tmp_path / "argv.log"), str(tmp_path))


def test_in_process_runtime_names_missing_operations(tmp_path):
    from capsa.runtime import api
    rt = InProcessRuntime(str(tmp_path))
    missing = [v for v in ("exec", "pause", "resume", "update") if not hasattr(api, v)]
    for verb in missing:
        with pytest.raises(UsageError) as exc:
            getattr(rt, verb)(*(["c1", "/p", "/x"] if verb == "exec" else
                                ["c1", {}] if verb == "update" else ["c1"]))
        assert verb in exc.value.message
    with pytest.raises(StateError):
        rt.state("does-not-exist")
