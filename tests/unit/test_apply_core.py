"""apply steps of the core (namespaces, identity, process) against the recording fake kernel."""
import pytest

from capsa.errors import ConfigError
from capsa.runtime import spec as specs
from capsa.runtime.apply import identity, namespaces, process
from capsa.syscalls.fake import FakeKernel
from capsa.syscalls.kernel import Kernel


def test_fake_answers_every_kernel_method():
    public = [name for name in dir(Kernel) if not name.startswith("_")]
    fake = FakeKernel()
    for name in public:
        assert callable(getattr(fake, name)), name


def test_join_opens_setns_closes_in_given_order():
    kernel = FakeKernel()
    namespaces.apply_join(kernel, {"network": "/proc/9/ns/net", "user": "/proc/9/ns/user"},
                          specs.NAMESPACE_ORDER)
    assert kernel.names() == ["open", "setns", "close", "open", "setns", "close"]
    assert kernel.calls[0][1] == "/proc/9/ns/user"
    assert kernel.calls[1][2] == specs.NAMESPACES["user"][0]
    assert kernel.calls[4][2] == specs.NAMESPACES["network"][0]


def test_join_failure_names_the_namespace_field():
    kernel = FakeKernel()
    kernel.failures["setns"] = 22
    with pytest.raises(ConfigError) as info:
        namespaces.apply_join(kernel, {"pid": "/tmp/notns"}, ("pid",))
    assert info.value.field == "linux.namespaces[pid].path" and "/proc/<pid>/ns/pid" in info.value.hint
    assert kernel.names()[-1] == "close"


def test_unshare_combines_flags():
    kernel = FakeKernel()
    namespaces.apply_unshare(kernel, ["mount", "uts", "ipc"])
    assert kernel.calls == [("unshare", 0x00020000 | 0x04000000 | 0x08000000)]
    namespaces.apply_unshare(kernel, [])
    assert len(kernel.calls) == 1


def test_id_maps_and_offsets_written_where_the_kernel_reads_them():
    kernel = FakeKernel()
    namespaces.apply_id_maps(kernel, 42, {"uid_map": "0 1000 1\n", "gid_map": "0 1000 1\n"})
    namespaces.apply_time_offsets(kernel, "boottime 10 0\n")
    assert kernel.files == {"/proc/42/uid_map": b"0 1000 1\n", "/proc/42/gid_map": b"0 1000 1\n",
                            "/proc/self/timens_offsets": b"boottime 10 0\n"}


def test_identity_order_groups_gid_uid_umask():
    kernel = FakeKernel()
    plan = specs.build_process({"args": ["sh"], "user": {"uid": 7, "gid": 8, "additionalGids": [9],
                                                          "umask": 0o027}})
    identity.apply_identity(kernel, plan)
    assert kernel.calls == [("setgroups", [9]), ("setresgid", 8, 8, 8), ("setresuid", 7, 7, 7),
                            ("umask", 0o027)]


def test_identity_failure_hints_at_mapping():
    kernel = FakeKernel()
    kernel.failures["setresuid"] = 22
    plan = specs.build_process({"args": ["sh"], "user": {"uid": 7, "gid": 8}})
    with pytest.raises(ConfigError) as info:
        identity.apply_identity(kernel, plan)
    assert info.value.field == "process.user" and "mapped" in info.value.hint


def test_rlimit_above_hard_limit_names_rlimit_value_and_limit():
    kernel = FakeKernel()
    kernel.failures["prlimit"] = 1
    kernel.rlimits[7] = (1024, 20000)
    plan = specs.build_process({"args": ["sh"], "rlimits": [
        {"type": "RLIMIT_NOFILE", "soft": 1048576, "hard": 1048576}]})
    with pytest.raises(ConfigError) as info:
        process.apply_rlimits(kernel, plan)
    line = info.value.line()
    assert info.value.field == "process.rlimits[0]"
    assert "RLIMIT_NOFILE" in line and "1048576" in line and "20000" in line
    assert "CAP_SYS_RESOURCE" in line


def test_process_attributes_through_proc_self_fd():
    kernel = FakeKernel()
    plan = specs.build_process({"args": ["sh"], "oomScoreAdj": 100,
                                "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 4},
                                "execCPUAffinity": {"initial": "0"}})
    process.apply_process_attributes(kernel, plan, 55)
    assert kernel.calls[0] == ("write_file", "oom_score_adj", "100", ("dirfd", 55))
    assert kernel.calls[1] == ("ioprio_set", 1, 0, (2 << 13) | 4)
    assert kernel.calls[2] == ("sched_setaffinity", 0, [0])


def test_cwd_outside_root_is_refused():
    kernel = FakeKernel()
    kernel.returns["getcwd"] = "(unreachable)/host"
    with pytest.raises(ConfigError) as info:
        process.apply_cwd(kernel, "/proc/self/fd/7")
    assert info.value.field == "process.cwd" and "outside the container" in info.value.message


def test_fd_sweep_keeps_preserved_fds():
    kernel = FakeKernel()
    process.apply_fd_sweep(kernel, 2)
    assert kernel.calls == [("close_range", 5, 0xFFFFFFFF, process.CLOSE_RANGE_CLOEXEC)]


def test_find_executable_uses_container_path(tmp_path):
    exe = tmp_path / "tool"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert process.find_executable("tool", ["PATH=/nonexistent:%s" % tmp_path]) == str(exe)
    with pytest.raises(ConfigError) as info:
        process.find_executable("absent-tool", ["PATH=%s" % tmp_path])
    assert "executable file not found in $PATH" in info.value.message
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ConfigError):
        process.find_executable(str(tmp_path / "plain"), [])
