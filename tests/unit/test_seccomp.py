"""Seccomp translation: the OCI section -> plan -> libseccomp, checked against libseccomp's own
exports of the filter (seccomp_export_pfc listing, and the seccomp_export_bpf program run by a
small classic-BPF interpreter here). Also the compile cache and the validation errors. No root."""
import os
import struct

import pytest

from capsa.errors import ConfigError
from capsa.runtime.apply import security
from capsa.runtime.security import tables
from capsa.syscalls import seccomp as libseccomp

FACTS = {"cap_last_cap": 40, "lsms": [], "seccomp_actions": None}
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003

pytestmark = pytest.mark.skipif(libseccomp.read_libseccomp_version() is None,
                                reason="host facility missing: libseccomp.so.2")
if os.uname().machine != "x86_64":  # syscall numbers below are x86_64's
    pytestmark = pytest.mark.skip(reason="host facility missing: an x86_64 machine")

NR = {"read": 0, "write": 1, "socket": 41, "clone": 56, "getppid": 110, "mkdir": 83,
      "personality": 135, "mount": 165, "unshare": 272, "keyctl": 250, "ptrace": 101,
      "chroot": 161, "clone3": 435, "getpid": 39, "kill": 62, "uname": 63, "umask": 95,
      "arch_prctl": 158, "reboot": 169}


def _plan(section, facts=FACTS):
    return security.build_seccomp_plan(section, facts)


def _compile(section, export="bpf"):
    program, skipped = libseccomp.compile_filter(_plan(section), export)
    return program, skipped


def run_bpf(program, nr, args=(), arch=AUDIT_ARCH_X86_64):
    """Run a classic BPF seccomp program on struct seccomp_data; -> the SECCOMP_RET_* value."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack("<HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    acc = 0
    pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if code == 0x20:                       # BPF_LD | BPF_W | BPF_ABS
            acc = struct.unpack_from("<I", data, k)[0]
        elif cls == 0x04:                      # BPF_ALU | op | BPF_K
            op = code & 0xF0
            if op == 0x50:
                acc &= k
            elif op == 0x40:
                acc |= k
            else:
                raise AssertionError("ALU op %#x" % code)
        elif code == 0x05:                     # BPF_JMP | BPF_JA
            pc += k
        elif cls == 0x05:                      # conditional jumps against K
            op = code & 0xF0
            taken = {0x10: acc == k, 0x20: acc > k, 0x30: acc >= k, 0x40: bool(acc & k)}[op]
            pc += jt if taken else jf
        elif code == 0x06:                     # BPF_RET | BPF_K
            return k
        else:
            raise AssertionError("unexpected BPF instruction %#x" % code)


def _action(name, errno_ret=0):
    return tables.SECCOMP_ACTIONS[name][0] | errno_ret


# ------------------------------------------------------------------ actions

@pytest.mark.parametrize("name", sorted(tables.SECCOMP_ACTIONS))
def test_every_action_reaches_the_program(name):
    rule = {"names": ["mkdir"], "action": name}
    if name == "SCMP_ACT_NOTIFY":
        section = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x", "syscalls": [rule]}
    elif name == "SCMP_ACT_ALLOW":
        section = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [rule]}
    else:
        section = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}
    if name in tables.SECCOMP_ACTIONS_WITH_ERRNO:
        rule["errnoRet"] = 17
    program, _ = _compile(section)
    expected = _action(name, 17 if name in tables.SECCOMP_ACTIONS_WITH_ERRNO else 0)
    assert run_bpf(program, NR["mkdir"]) == expected
    assert run_bpf(program, NR["getpid"]) == _action(section["defaultAction"], 1 if section[
        "defaultAction"] == "SCMP_ACT_ERRNO" else 0)


def test_default_errno_and_rule_errno_in_the_pfc_listing():
    section = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
               "syscalls": [{"names": ["getpid", "uname"], "action": "SCMP_ACT_ALLOW"},
                            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                            {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
                            {"names": ["kill"], "action": "SCMP_ACT_TRACE", "errnoRet": 7}]}
    pfc = _compile(section, "pfc")[0].decode()
    blocks = _pfc_blocks(pfc)
    assert blocks["getpid"] == ["action ALLOW;"]
    assert blocks["uname"] == ["action ALLOW;"]
    assert blocks["mkdir"] == ["action ERRNO(13);"]
    assert blocks["getppid"] == ["action KILL_PROCESS;"]
    assert blocks["kill"] == ["action TRACE(7);"]
    assert "# default action\n  action ERRNO(38);" in pfc


def _pfc_blocks(pfc):
    """syscall name -> the stripped lines of its block in libseccomp's PFC listing."""
    blocks = {}
    current = None
    for line in pfc.splitlines():
        text = line.strip()
        if text.startswith('# filter for syscall "'):
            current = text.split('"')[1]
            blocks[current] = []
        elif text.startswith("# default action") or text.startswith("# filter for arch"):
            current = None
        elif current and "$syscall" not in text:  # the binary tree's own jumps
            blocks[current].append(text)
    return blocks


def test_rule_with_the_default_action_is_dropped_as_runc_does():
    section = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
                            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    plan = _plan(section)
    assert [rule["name"] for rule in plan["rules"]] == ["mkdir"]
    assert plan["rules"][0]["action"] == _action("SCMP_ACT_ERRNO", 1)


# ------------------------------------------------------------------ operators

OPERATOR_CASES = [
    # op, value, valueTwo, [(arg0, matches)]
    ("SCMP_CMP_EQ", 8, 0, [(8, True), (9, False), (8 | 1 << 32, False)]),
    ("SCMP_CMP_NE", 40, 0, [(40, False), (2, True), (40 | 1 << 32, True)]),
    ("SCMP_CMP_LT", 38, 0, [(37, True), (38, False), (1 << 33, False)]),
    ("SCMP_CMP_LE", 38, 0, [(38, True), (39, False), (0, True)]),
    ("SCMP_CMP_GT", 40, 0, [(41, True), (40, False), (1 << 40, True)]),
    ("SCMP_CMP_GE", 40, 0, [(40, True), (39, False), (1 << 35, True)]),
    ("SCMP_CMP_MASKED_EQ", 0x7E020000, 0, [(0x11, True), (0x10000000 | 0x11, False),
                                           (0x00020000, False)]),
    ("SCMP_CMP_MASKED_EQ", 0xF0, 0x30, [(0x31, True), (0x41, False)]),
]


@pytest.mark.parametrize("op,value,value_two,cases", OPERATOR_CASES)
def test_every_operator_compares_as_the_kernel_sees_it(op, value, value_two, cases):
    section = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
         "args": [{"index": 0, "value": value, "valueTwo": value_two, "op": op}]}]}
    program, _ = _compile(section)
    for arg, matches in cases:
        got = run_bpf(program, NR["personality"], [arg])
        assert got == (_action("SCMP_ACT_ERRNO", 22) if matches else _action("SCMP_ACT_ALLOW")), \
            (op, hex(arg))


def test_args_on_distinct_indexes_are_anded_in_one_rule():
    section = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                  {"index": 1, "value": 3, "op": "SCMP_CMP_EQ"}]}]}
    assert len(_plan(section)["rules"]) == 1
    program, _ = _compile(section)
    eperm = _action("SCMP_ACT_ERRNO", 1)
    assert run_bpf(program, NR["socket"], [2, 3]) == eperm
    assert run_bpf(program, NR["socket"], [2, 1]) == _action("SCMP_ACT_ALLOW")
    assert run_bpf(program, NR["socket"], [10, 3]) == _action("SCMP_ACT_ALLOW")


def test_args_repeating_an_index_become_one_rule_each_as_runc_does():
    section = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                  {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]}
    assert len(_plan(section)["rules"]) == 2
    program, _ = _compile(section)
    assert run_bpf(program, NR["personality"], [0]) == _action("SCMP_ACT_ALLOW")
    assert run_bpf(program, NR["personality"], [8]) == _action("SCMP_ACT_ALLOW")
    assert run_bpf(program, NR["personality"], [4]) == _action("SCMP_ACT_ERRNO", 1)


# ------------------------------------------------------------------ architectures, names

def test_listed_architectures_each_get_their_own_filter():
    section = {"defaultAction": "SCMP_ACT_ALLOW",
               "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    pfc = _compile(section, "pfc")[0].decode()
    assert "# filter for arch x86_64 " in pfc
    assert "# filter for arch x86 " in pfc
    assert "# filter for arch x32 " in pfc
    program, _ = _compile(section)
    assert run_bpf(program, 39, arch=AUDIT_ARCH_I386) == _action("SCMP_ACT_ERRNO", 1)  # i386 mkdir
    assert run_bpf(program, 39) == _action("SCMP_ACT_ALLOW")  # x86_64 getpid


def test_an_unlisted_architecture_is_killed():
    section = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}
    program, _ = _compile(section)
    assert run_bpf(program, 39, arch=AUDIT_ARCH_I386) == _action("SCMP_ACT_KILL_THREAD")


def test_unknown_syscall_names_are_skipped_as_runc_does():
    section = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["no_such_syscall", "mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    program, skipped = _compile(section)
    assert skipped == ["no_such_syscall"]
    assert run_bpf(program, NR["mkdir"]) == _action("SCMP_ACT_ERRNO", 1)


def test_an_architecture_libseccomp_lacks_is_a_clear_error(monkeypatch):
    plan = _plan({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"]})
    plan["arches"] = ["vax"]
    with pytest.raises(ConfigError) as err:
        libseccomp.compile_filter(plan)
    assert err.value.field == "linux.seccomp.architectures"


# ------------------------------------------------------------------ flags and notify

def test_flags_become_kernel_bits():
    plan = _plan({"defaultAction": "SCMP_ACT_ALLOW", "flags": [
        "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]})
    # WAIT_KILLABLE_RECV only with a listener: seccomp(2) refuses it alone
    assert plan["flags"] == 2 | 4
    assert plan["listener"] is False
    plan = _plan({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x", "flags": [
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"], "syscalls": [
        {"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]})
    assert plan["flags"] == 8 | 32
    assert plan["flag_names"] == ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]


def test_kernel_support_of_flags_is_probed():
    release = tuple(int(part) for part in os.uname().release.split(".")[:2])
    expected = [1, 2, 4, 32] if release >= (5, 19) else [1, 2, 4]
    assert libseccomp.read_supported_flags([1, 2, 4, 32]) == expected
    assert libseccomp.read_supported_flags([1 << 20]) == []


@pytest.mark.parametrize("section,field", [
    ({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/x"}, "linux.seccomp.defaultAction"),
    ({"defaultAction": "SCMP_ACT_ALLOW",
      "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]},
     "linux.seccomp.listenerPath"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x",
      "syscalls": [{"names": ["mkdir", "write"], "action": "SCMP_ACT_NOTIFY"}]},
     "linux.seccomp.syscalls[0].names[1]"),
    ({"defaultAction": "SCMP_ACT_DANCE"}, "linux.seccomp.defaultAction"),
    ({}, "linux.seccomp.defaultAction"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 3}, "linux.seccomp.defaultErrnoRet"),
    ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}, "linux.seccomp.defaultErrnoRet"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]},
     "linux.seccomp.architectures[0]"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_FAST"]},
     "linux.seccomp.flags[0]"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_KILL"}]},
     "linux.seccomp.syscalls[0].names"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_KILL",
                                                        "args": [{"index": 6, "op": "SCMP_CMP_EQ",
                                                                  "value": 1}]}]},
     "linux.seccomp.syscalls[0].args[0].index"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_KILL",
                                                        "args": [{"index": 0, "op": "SCMP_CMP_IS",
                                                                  "value": 1}]}]},
     "linux.seccomp.syscalls[0].args[0].op"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "SCMP_ACT_KILL",
                                                        "args": [{"index": 0, "op": "SCMP_CMP_EQ",
                                                                  "value": 1 << 64}]}]},
     "linux.seccomp.syscalls[0].args[0].value"),
])
def test_bad_sections_name_the_field(section, field):
    with pytest.raises(ConfigError) as err:
        _plan(section)
    assert err.value.field == field


def test_an_action_the_kernel_lacks_is_refused():
    facts = dict(FACTS, seccomp_actions=["allow", "errno", "kill_thread"])
    with pytest.raises(ConfigError) as err:
        _plan({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_LOG"}]}, facts)
    assert err.value.field == "linux.seccomp.syscalls[0].action"


def test_unsupported_flag_is_refused_before_fork(monkeypatch):
    plan = security.build_security_plan(
        {"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
                               "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}}}, FACTS)
    monkeypatch.setattr(libseccomp, "read_supported_flags", lambda bits: [])
    with pytest.raises(ConfigError) as err:
        security.prepare_security(plan, cache_dir="")
    assert err.value.field == "linux.seccomp.flags"


# ------------------------------------------------------------------ the compile cache

def _spec_plan():
    return security.build_security_plan({"linux": {"seccomp": {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "no_such_syscall"], "action": "SCMP_ACT_ERRNO"}]}}},
        FACTS)


def test_cache_serves_the_same_program_without_compiling(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first = _spec_plan()
    assert security.prepare_security(first, cache_dir=cache) == ["no_such_syscall"]
    assert len(os.listdir(cache)) == 1
    assert os.stat(cache).st_mode & 0o777 == 0o700

    def refuse(*args):
        raise AssertionError("compiled although cached")
    monkeypatch.setattr(libseccomp, "compile_filter", refuse)
    second = _spec_plan()
    assert security.prepare_security(second, cache_dir=cache) == ["no_such_syscall"]
    assert security.read_prepared_program(second["seccomp"]) == \
        security.read_prepared_program(first["seccomp"])


def test_cache_entry_others_could_write_is_ignored(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    security.prepare_security(_spec_plan(), cache_dir=cache)
    entry = os.path.join(cache, os.listdir(cache)[0])
    with open(entry, "r+b") as handle:
        handle.seek(-8, os.SEEK_END)
        handle.write(b"\x06\x00\x00\x00\x00\x00\xff\x7f")  # planted: RET ALLOW
    os.chmod(entry, 0o666)
    plan = _spec_plan()
    security.prepare_security(plan, cache_dir=cache)
    program = security.read_prepared_program(plan["seccomp"])
    assert run_bpf(program, NR["mkdir"]) == _action("SCMP_ACT_ERRNO", 1)
    assert os.stat(entry).st_mode & 0o777 == 0o600


def test_different_profiles_do_not_share_a_cache_entry(tmp_path):
    cache = str(tmp_path / "cache")
    security.prepare_security(_spec_plan(), cache_dir=cache)
    other = security.build_security_plan({"linux": {"seccomp": {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2}]}}}, FACTS)
    security.prepare_security(other, cache_dir=cache)
    assert run_bpf(security.read_prepared_program(other["seccomp"]), NR["mkdir"]) == \
        _action("SCMP_ACT_ERRNO", 2)
    assert len(os.listdir(cache)) == 2


# ------------------------------------------------------------------ ENOSYS for newer syscalls

ENOSYS_RET = _action("SCMP_ACT_ERRNO", 38)
DENY_BY_DEFAULT = {"defaultAction": "SCMP_ACT_ERRNO",
                   "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                   "syscalls": [{"names": ["read", "getpid", "mkdir"], "action": "SCMP_ACT_ALLOW"}]}


def test_syscalls_newer_than_the_profile_get_enosys_as_runc_does():
    assert _plan(DENY_BY_DEFAULT)["enosys_stub"] is True
    program, _ = _compile(DENY_BY_DEFAULT)
    assert run_bpf(program, NR["mkdir"]) == _action("SCMP_ACT_ALLOW")
    assert run_bpf(program, 50) == _action("SCMP_ACT_ERRNO", 1)     # known, not allowed
    assert run_bpf(program, 84) == ENOSYS_RET                         # above mkdir, the last
    assert run_bpf(program, 1000) == ENOSYS_RET
    # x32 numbers carry bit 30 and have their own last syscall
    assert run_bpf(program, 0x40000000 | 39) == _action("SCMP_ACT_ALLOW")
    assert run_bpf(program, 0x40000000 | 84) == ENOSYS_RET
    assert run_bpf(program, 0x40000000 | 50) == _action("SCMP_ACT_ERRNO", 1)
    # i386: mkdir is 39 there
    assert run_bpf(program, 39, arch=AUDIT_ARCH_I386) == _action("SCMP_ACT_ALLOW")
    assert run_bpf(program, 40, arch=AUDIT_ARCH_I386) == ENOSYS_RET
    assert run_bpf(program, 5, arch=AUDIT_ARCH_I386) == _action("SCMP_ACT_ERRNO", 1)


def test_no_enosys_stub_when_the_default_lets_syscalls_through_or_is_enosys():
    for section in ({"defaultAction": "SCMP_ACT_ALLOW"}, {"defaultAction": "SCMP_ACT_LOG"},
                    {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38}):
        section = dict(section, syscalls=[{"names": ["mkdir"], "action": "SCMP_ACT_KILL"}])
        assert _plan(section)["enosys_stub"] is False
    program, _ = _compile({"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": [
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]})
    assert run_bpf(program, 1000) == ENOSYS_RET
    assert run_bpf(program, 20) == _action("SCMP_ACT_KILL_PROCESS")


def test_rules_dropped_for_matching_the_default_still_count_for_the_last_syscall():
    section = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["reboot"], "action": "SCMP_ACT_ERRNO"}]}
    plan = _plan(section)
    assert plan["other_names"] == ["reboot"]
    program, _ = _compile(section)
    assert run_bpf(program, NR["reboot"]) == _action("SCMP_ACT_ERRNO", 1)
    assert run_bpf(program, NR["reboot"] - 1) == _action("SCMP_ACT_ERRNO", 1)
    assert run_bpf(program, NR["reboot"] + 1) == ENOSYS_RET


def test_enosys_stub_on_s390x_also_answers_the_multiplexer_number():
    allow_all = struct.pack("=HBBI", 0x06, 0, 0, _action("SCMP_ACT_ALLOW"))
    program = libseccomp.build_enosys_stub({0x80000016: {"native": 400}}) + allow_all
    s390x = 0x80000016
    assert run_bpf(program, 0, arch=s390x) == ENOSYS_RET
    assert run_bpf(program, 401, arch=s390x) == ENOSYS_RET
    assert run_bpf(program, 5, arch=s390x) == _action("SCMP_ACT_ALLOW")
    assert run_bpf(program, 1000, arch=AUDIT_ARCH_X86_64) == _action("SCMP_ACT_ALLOW")
