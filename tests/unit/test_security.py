"""Capabilities, no_new_privs, LSM labels and the apply order, against FakeKernel; the NOTIFY
fd hand-off over a real unix socket; features from the tables. No root needed."""
import array
import errno
import json
import os
import socket

import pytest

from capsa.errors import ConfigError, ContainerError, KernelError
from capsa.runtime.apply import security
from capsa.runtime.security import tables
from capsa.syscalls.fake import FakeKernel

FACTS = {"cap_last_cap": 40, "lsms": [], "seccomp_actions": None}
ALL = (1 << 41) - 1


def _plan(process=None, seccomp=None, facts=FACTS):
    spec = {"process": process or {}}
    if seccomp is not None:
        spec["linux"] = {"seccomp": seccomp}
    return security.build_security_plan(spec, facts)


def _kernel(held=(ALL, ALL, 0)):
    kernel = FakeKernel()
    kernel.returns["capget"] = held
    return kernel


# ------------------------------------------------------------------ the plan

def test_caps_plan_has_numbers_masks_and_the_drop_list():
    plan = _plan({"capabilities": {
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"],
        "effective": ["CAP_KILL"], "permitted": ["CAP_KILL", "CAP_CHOWN"],
        "inheritable": ["CAP_NET_RAW"], "ambient": ["CAP_KILL"]}})
    caps = plan["caps"]
    assert caps["bounding"] == [0, 5, 13]
    assert caps["drop"] == [n for n in range(41) if n not in (0, 5, 13)]
    assert caps["effective"] == 1 << 5
    assert caps["permitted"] == 1 << 5 | 1
    assert caps["inheritable"] == 1 << 13
    assert caps["ambient"] == [5]
    json.dumps(plan)


def test_absent_capabilities_mean_none_at_all():
    caps = _plan({})["caps"]
    assert caps["drop"] == list(range(41))
    assert (caps["effective"], caps["permitted"], caps["inheritable"], caps["ambient"]) == \
        (0, 0, 0, [])


def test_unknown_capability_names_the_field():
    with pytest.raises(ConfigError) as err:
        _plan({"capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_FLY"]}})
    assert err.value.field == "process.capabilities.bounding[2]"
    assert "CAP_FLY" in err.value.line()


def test_capability_newer_than_the_kernel_is_refused():
    facts = dict(FACTS, cap_last_cap=37)
    with pytest.raises(ConfigError) as err:
        _plan({"capabilities": {"permitted": ["CAP_BPF"]}}, facts=facts)
    assert err.value.field == "process.capabilities.permitted[0]"
    assert "not known to this kernel" in err.value.message
    assert _plan({"capabilities": {"permitted": ["CAP_AUDIT_READ"]}}, facts=facts)["caps"][
        "drop"] == list(range(38))


def test_sets_the_kernel_would_refuse_are_config_errors():
    with pytest.raises(ConfigError) as err:
        _plan({"capabilities": {"effective": ["CAP_KILL"], "permitted": []}})
    assert err.value.field == "process.capabilities.effective"
    with pytest.raises(ConfigError) as err:
        _plan({"capabilities": {"inheritable": ["CAP_KILL"], "bounding": ["CAP_CHOWN"]}})
    assert err.value.field == "process.capabilities.inheritable"
    with pytest.raises(ConfigError) as err:
        _plan({"capabilities": {"bounding": "CAP_KILL"}})
    assert err.value.field == "process.capabilities.bounding"
    with pytest.raises(ConfigError):
        _plan({"capabilities": {"bounding": [7]}})


def test_no_new_privileges_must_be_a_boolean():
    assert _plan({"noNewPrivileges": True})["no_new_privileges"] is True
    with pytest.raises(ConfigError) as err:
        _plan({"noNewPrivileges": "yes"})
    assert err.value.field == "process.noNewPrivileges"


def test_lsm_labels_need_the_lsm_active_on_the_host():
    with pytest.raises(ConfigError) as err:
        _plan({"apparmorProfile": "docker-default"})
    assert err.value.field == "process.apparmorProfile"
    assert "not active" in err.value.message
    with pytest.raises(ConfigError) as err:
        _plan({"selinuxLabel": "system_u:system_r:container_t:s0"})
    assert err.value.field == "process.selinuxLabel"
    facts = dict(FACTS, lsms=["apparmor", "selinux"])
    plan = _plan({"apparmorProfile": "docker-default",
                  "selinuxLabel": "system_u:system_r:container_t:s0"}, facts=facts)
    assert plan["apparmor"] == "docker-default"
    assert plan["selinux"] == "system_u:system_r:container_t:s0"
    assert _plan({"apparmorProfile": ""})["apparmor"] is None
    assert _plan({"apparmorProfile": "unconfined"})["apparmor"] is None
    assert _plan({"apparmorProfile": "unconfined"}, facts=facts)["apparmor"] == "unconfined"


def test_read_security_facts_reads_this_kernel():
    facts = security.read_security_facts()
    with open("/proc/sys/kernel/cap_last_cap") as handle:
        assert facts["cap_last_cap"] == int(handle.read())
    assert isinstance(facts["lsms"], list)
    json.dumps(facts)


# ------------------------------------------------------------------ apply, in order

def test_before_identity_drops_the_bounding_set_then_keeps_caps():
    plan = _plan({"capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"]}})
    kernel = _kernel()
    security.apply_before_identity(kernel, plan)
    drops = [call[0] for call in kernel.calls_of("cap_bound_drop")]
    assert drops == [n for n in range(41) if n not in (0, 5)]
    assert kernel.names()[-1] == "set_keepcaps"
    assert kernel.calls_of("set_keepcaps") == [(True,)]


def test_before_identity_failure_names_the_capability():
    kernel = _kernel()
    kernel.failures["cap_bound_drop"] = errno.EPERM
    with pytest.raises(ContainerError) as err:
        security.apply_before_identity(kernel, _plan({}))
    assert "CAP_CHOWN" in err.value.message


def test_after_identity_sets_caps_ambient_then_no_new_privs():
    plan = _plan({"noNewPrivileges": True, "capabilities": {
        "bounding": ["CAP_KILL", "CAP_NET_RAW", "CAP_CHOWN"],
        "effective": ["CAP_KILL"], "permitted": ["CAP_KILL", "CAP_NET_RAW"],
        "inheritable": ["CAP_KILL", "CAP_CHOWN"], "ambient": ["CAP_KILL", "CAP_NET_RAW"]}})
    kernel = _kernel()
    security.apply_after_identity(kernel, plan, None)
    assert kernel.names() == ["capget", "capset", "cap_ambient_clear", "cap_ambient_raise",
                              "set_keepcaps", "set_no_new_privs"]
    assert kernel.calls_of("capset") == [(1 << 5, 1 << 5 | 1 << 13, 1 << 5 | 1)]
    # NET_RAW is not inheritable: PR_CAP_AMBIENT_RAISE would fail, so it is left out like runc
    assert kernel.calls_of("cap_ambient_raise") == [(5,)]
    assert kernel.calls_of("set_keepcaps") == [(False,)]


def test_capabilities_the_runtime_lacks_are_left_out():
    plan = _plan({"capabilities": {
        "bounding": ["CAP_SYS_RESOURCE", "CAP_KILL"],
        "effective": ["CAP_SYS_RESOURCE", "CAP_KILL"],
        "permitted": ["CAP_SYS_RESOURCE", "CAP_KILL"]}})
    kernel = _kernel(held=(ALL & ~(1 << 24), ALL & ~(1 << 24), 0))
    security.apply_after_identity(kernel, plan, None)
    assert kernel.calls_of("capset") == [(1 << 5, 1 << 5, 0)]


def test_capset_failure_is_one_clear_error():
    kernel = _kernel()
    kernel.failures["capset"] = errno.EPERM
    with pytest.raises(ContainerError) as err:
        security.apply_after_identity(kernel, _plan({}), None)
    assert err.value.field == "process.capabilities"


def test_labels_are_written_through_a_verified_procfs_handle_before_caps():
    facts = dict(FACTS, lsms=["apparmor", "selinux"])
    plan = _plan({"apparmorProfile": "capsa-test", "selinuxLabel": "u:r:t:s0"}, facts=facts)
    kernel = _kernel()
    security.apply_after_identity(kernel, plan, None)
    names = kernel.names()
    assert names[:2] == ["open", "fstatfs_type"]
    assert names.index("write_file") < names.index("capset")
    opened = kernel.calls_of("open")[0]
    assert opened[0] == "/proc/thread-self/attr"
    assert opened[1] & os.O_NOFOLLOW and opened[1] & os.O_DIRECTORY
    fd = kernel.calls_of("fstatfs_type")[0][0]
    assert kernel.calls_of("write_file") == [
        ("apparmor/exec", "exec capsa-test", ("dirfd", fd)), ("exec", "u:r:t:s0", ("dirfd", fd))]
    assert kernel.calls_of("close") == [(fd,)]


def test_apparmor_falls_back_to_the_shared_exec_attr():
    facts = dict(FACTS, lsms=["apparmor"])
    plan = _plan({"apparmorProfile": "capsa-test"}, facts=facts)
    kernel = _kernel()
    kernel.failures["write_file"] = lambda args: errno.ENOENT if args[0] == "apparmor/exec" else 0
    security.apply_after_identity(kernel, plan, None)
    assert [call[0] for call in kernel.calls_of("write_file")] == ["apparmor/exec", "exec"]


def test_labels_refuse_a_proc_that_is_not_procfs():
    facts = dict(FACTS, lsms=["selinux"])
    plan = _plan({"selinuxLabel": "u:r:t:s0"}, facts=facts)
    kernel = _kernel()
    kernel.returns["fstatfs_type"] = 0x01021994  # tmpfs planted over /proc
    with pytest.raises(ContainerError) as err:
        security.apply_after_identity(kernel, plan, None)
    assert err.value.field == "process.selinuxLabel"
    assert "write_file" not in kernel.names()
    assert kernel.names()[-1] == "close"


def test_a_refused_label_is_a_clear_error():
    facts = dict(FACTS, lsms=["selinux"])
    kernel = _kernel()
    kernel.failures["write_file"] = errno.EINVAL
    with pytest.raises(ContainerError) as err:
        security.apply_after_identity(kernel, _plan({"selinuxLabel": "bad"}, facts=facts), None)
    assert "bad" in err.value.message and err.value.field == "process.selinuxLabel"


SECCOMP = {"defaultAction": "SCMP_ACT_ALLOW",
           "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}


def test_seccomp_is_loaded_last_with_no_new_privs():
    plan = _plan({"noNewPrivileges": True}, seccomp=SECCOMP)
    security.prepare_security(plan, cache_dir="")
    kernel = _kernel()
    security.apply_after_identity(kernel, plan, None)
    assert kernel.names()[-2:] == ["set_no_new_privs", "seccomp_load"]
    program, flags = kernel.calls_of("seccomp_load")[0]
    assert program == security.read_prepared_program(plan["seccomp"]) and flags == 0


def test_without_no_new_privs_seccomp_goes_in_while_cap_sys_admin_is_held():
    plan = _plan({"capabilities": {"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"],
                                   "effective": ["CAP_KILL"]}}, seccomp=SECCOMP)
    security.prepare_security(plan, cache_dir="")
    kernel = _kernel(held=(0, ALL, 0))  # after setuid to non-root: effective cleared
    security.apply_after_identity(kernel, plan, None)
    assert kernel.names()[:4] == ["capget", "capset", "seccomp_load", "capset"]
    assert kernel.calls_of("capset")[0] == (1 << 21, ALL, 0)
    assert kernel.calls_of("capset")[1] == (1 << 5, 1 << 5, 0)


def test_seccomp_keeps_the_last_place_when_the_process_keeps_cap_sys_admin():
    plan = _plan({"capabilities": {"permitted": ["CAP_SYS_ADMIN"], "effective": ["CAP_SYS_ADMIN"],
                                   "bounding": ["CAP_SYS_ADMIN"]}}, seccomp=SECCOMP)
    security.prepare_security(plan, cache_dir="")
    kernel = _kernel()
    security.apply_after_identity(kernel, plan, None)
    assert kernel.names()[-1] == "seccomp_load"
    assert len(kernel.calls_of("capset")) == 1


def test_unprepared_filter_is_an_error_not_an_unfiltered_container():
    plan = _plan({"noNewPrivileges": True}, seccomp=SECCOMP)
    with pytest.raises(ContainerError) as err:
        security.apply_after_identity(_kernel(), plan, None)
    assert "prepare_security" in err.value.line()


def test_a_failed_filter_load_is_a_container_error():
    plan = _plan({"noNewPrivileges": True}, seccomp=SECCOMP)
    security.prepare_security(plan, cache_dir="")
    kernel = _kernel()
    kernel.failures["seccomp_load"] = errno.EINVAL
    with pytest.raises(ContainerError) as err:
        security.apply_after_identity(kernel, plan, None)
    assert err.value.field == "linux.seccomp"


NOTIFY = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock",
          "listenerMetadata": "meta", "flags": ["SECCOMP_FILTER_FLAG_TSYNC"],
          "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}


def test_notify_hands_the_listener_fd_to_send_fd_then_closes_it():
    plan = _plan({"noNewPrivileges": True}, seccomp=NOTIFY)
    assert plan["seccomp_before_start"] is True
    security.prepare_security(plan, cache_dir="")
    kernel = _kernel()
    kernel.returns["seccomp_load"] = 42
    sent = []
    security.apply_after_identity(kernel, plan, lambda *args: sent.append(args))
    assert sent == [(42, "/run/agent.sock", "meta")]
    # NEW_LISTENER with TSYNC needs TSYNC_ESRCH (seccomp(2), Linux 5.7)
    assert kernel.calls_of("seccomp_load")[0][1] == 1 | 8 | 16
    assert kernel.calls_of("close") == [(42,)]


def test_send_notify_fd_delivers_fd_and_state_to_the_listener(tmp_path):
    path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    read_end, write_end = os.pipe()
    try:
        state = {"ociVersion": "1.2.0", "id": "c1", "status": "creating", "pid": 1234,
                 "bundle": "/b"}
        security.apply_send_notify_fd(write_end, path, "meta=1", state)
        conn, _ = server.accept()
        data, ancillary, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(4))
        conn.close()
        message = json.loads(data)
        assert message == {"ociVersion": "1.2.0", "fds": ["seccompFd"], "pid": 1234,
                           "metadata": "meta=1", "state": state}
        fds = array.array("i")
        fds.frombytes(ancillary[0][2])
        os.write(fds[0], b"through")
        os.close(fds[0])
        assert os.read(read_end, 16) == b"through"
    finally:
        server.close()
        os.close(read_end)
        os.close(write_end)


def test_send_notify_fd_to_a_missing_listener_is_a_clear_error(tmp_path):
    with pytest.raises(ContainerError) as err:
        security.apply_send_notify_fd(0, str(tmp_path / "nobody.sock"), "", {"pid": 1})
    assert err.value.field == "linux.seccomp.listenerPath"


# ------------------------------------------------------------------ features

def test_features_come_from_the_tables_and_the_facts():
    facts = {"cap_last_cap": 37, "lsms": ["apparmor"], "seccomp_actions": ["allow", "errno"],
             "libseccomp": "2.5.4", "seccomp_arches": ["SCMP_ARCH_X86_64"],
             "seccomp_flags": ["SECCOMP_FILTER_FLAG_LOG"]}
    features = security.build_security_features(facts)
    assert features["capabilities"] == list(tables.CAPABILITIES[:38])
    assert features["capabilities"][-1] == "CAP_AUDIT_READ"
    assert features["seccomp"]["enabled"] is True
    assert features["seccomp"]["actions"] == ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"]
    assert features["seccomp"]["operators"] == sorted(tables.SECCOMP_OPERATORS)
    assert features["seccomp"]["knownFlags"] == sorted(tables.SECCOMP_FLAGS)
    assert features["seccomp"]["supportedFlags"] == ["SECCOMP_FILTER_FLAG_LOG"]
    assert features["apparmor"] == {"enabled": True}
    assert features["selinux"] == {"enabled": False}


def test_features_read_libseccomp_when_the_facts_lack_it():
    features = security.build_security_features(security.read_security_facts())
    assert features["seccomp"]["enabled"] is True
    assert "SCMP_ARCH_X86_64" in features["seccomp"]["archs"]
    assert "SECCOMP_FILTER_FLAG_TSYNC" in features["seccomp"]["supportedFlags"]
    assert "SCMP_ACT_NOTIFY" in features["seccomp"]["actions"]


def test_a_refused_no_new_privs_stops_the_container():
    kernel = _kernel()
    kernel.failures["set_no_new_privs"] = errno.EINVAL
    with pytest.raises(KernelError):
        security.apply_after_identity(kernel, _plan({"noNewPrivileges": True}), None)
