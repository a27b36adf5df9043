"""The hardened default: Docker's 14 capabilities, masked/read-only paths, and the seccomp profile's
decisions, checked by running the compiled program (libseccomp's own BPF) on syscalls. No root."""
import os

import pytest

from capsa.runtime.apply import security
from capsa.runtime.security import defaults, tables
from capsa.syscalls import seccomp as libseccomp
from tests.unit.test_seccomp import NR, run_bpf

FACTS = {"cap_last_cap": 40, "lsms": [], "seccomp_actions": None}
ALLOW = tables.SECCOMP_ACTIONS["SCMP_ACT_ALLOW"][0]
EPERM = tables.SECCOMP_ACTIONS["SCMP_ACT_ERRNO"][0] | 1
ENOSYS = tables.SECCOMP_ACTIONS["SCMP_ACT_ERRNO"][0] | 38
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
SIGCHLD_VM_FS = 17 | 0x100 | 0x200
AF_INET, AF_ALG, AF_VSOCK = 2, 38, 40

needs_x86_64_libseccomp = pytest.mark.skipif(
    libseccomp.read_libseccomp_version() is None or os.uname().machine != "x86_64",
    reason="host facility missing: libseccomp.so.2 on an x86_64 machine")


def _program(capabilities=None, machine="x86_64"):
    section = defaults.build_hardened_seccomp(capabilities, machine)
    plan = security.build_seccomp_plan(section, FACTS)
    return libseccomp.compile_filter(plan)[0]


def test_hardened_caps_are_dockers_fourteen():
    caps = defaults.build_hardened_process_caps()
    assert len(caps["bounding"]) == 14
    assert caps["bounding"] == caps["effective"] == caps["permitted"]
    assert "CAP_SYS_ADMIN" not in caps["bounding"] and "CAP_NET_ADMIN" not in caps["bounding"]
    assert {"CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE", "CAP_SETPCAP"} <= set(
        caps["bounding"])
    assert "inheritable" not in caps and "ambient" not in caps
    plan = security.build_caps_plan(caps, FACTS)
    assert bin(plan["permitted"]).count("1") == 14


def test_hardened_paths():
    assert {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware",
            "/proc/sched_debug", "/proc/acpi"} <= set(defaults.HARDENED_MASKED_PATHS)
    assert set(defaults.HARDENED_READONLY_PATHS) == {"/proc/bus", "/proc/fs", "/proc/irq",
                                                    "/proc/sys", "/proc/sysrq-trigger"}


def test_hardened_data_keeps_gated_syscalls_out_of_the_plain_allow_list():
    data = defaults.read_hardened_data()
    allowed = set(data["allow"])
    for cap, names in data["allow_with_capability"].items():
        assert cap in tables.CAP_NUMBERS
        assert not allowed & set(names), cap
    assert not allowed & {"mount", "unshare", "setns", "keyctl", "ptrace", "bpf", "clone",
                          "clone3", "reboot", "init_module", "kexec_load", "add_key"}
    assert {"read", "write", "execve", "exit_group", "openat", "futex"} <= allowed


def test_hardened_section_is_valid_oci_for_the_plan():
    section = defaults.build_hardened_seccomp()
    assert section["defaultAction"] == "SCMP_ACT_ERRNO" and section["defaultErrnoRet"] == 1
    plan = security.build_seccomp_plan(section, FACTS)
    assert plan["default"] == EPERM


def test_hardened_architectures_follow_the_machine():
    assert defaults.build_hardened_seccomp(machine="x86_64")["architectures"] == [
        "SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert defaults.build_hardened_seccomp(machine="aarch64")["architectures"] == [
        "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    arm = defaults.build_hardened_seccomp(machine="aarch64")["syscalls"][0]["names"]
    assert "set_tls" in arm and "arch_prctl" not in arm
    s390 = defaults.build_hardened_seccomp(machine="s390x")["syscalls"]
    clone = [rule for rule in s390 if rule["names"] == ["clone"]][0]
    assert clone["args"][0]["index"] == 1  # s390 passes clone's flags second


@needs_x86_64_libseccomp
def test_hardened_blocks_mount_unshare_keyctl_ptrace_reboot():
    program = _program()
    for name in ("mount", "unshare", "keyctl", "ptrace", "reboot"):
        assert run_bpf(program, NR[name]) == EPERM, name
    for name in ("read", "write", "getpid", "uname", "umask", "chroot", "arch_prctl"):
        assert run_bpf(program, NR[name]) == ALLOW, name


@needs_x86_64_libseccomp
def test_hardened_answers_enosys_for_syscalls_newer_than_the_profile():
    program = _program()
    # mseal (462) is in the profile; a libseccomp too old to know the name cannot allow it
    assert run_bpf(program, 462) == (ALLOW if libseccomp.read_syscall_number("mseal") else ENOSYS)
    assert run_bpf(program, 1000) == ENOSYS
    assert run_bpf(program, NR["keyctl"]) == EPERM


@needs_x86_64_libseccomp
def test_hardened_clone_may_not_make_namespaces_and_clone3_is_enosys():
    program = _program()
    assert run_bpf(program, NR["clone"], [SIGCHLD_VM_FS]) == ALLOW
    assert run_bpf(program, NR["clone"], [SIGCHLD_VM_FS | CLONE_NEWUSER]) == EPERM
    assert run_bpf(program, NR["clone"], [CLONE_NEWNS]) == EPERM
    assert run_bpf(program, NR["clone3"]) == ENOSYS


@needs_x86_64_libseccomp
def test_hardened_socket_and_personality_conditions():
    program = _program()
    assert run_bpf(program, NR["socket"], [AF_INET]) == ALLOW
    assert run_bpf(program, NR["socket"], [AF_VSOCK]) == EPERM
    assert run_bpf(program, NR["socket"], [AF_ALG]) == EPERM
    assert run_bpf(program, NR["socket"], [39]) == ALLOW
    assert run_bpf(program, NR["personality"], [8]) == ALLOW
    assert run_bpf(program, NR["personality"], [0xFFFFFFFF]) == ALLOW
    assert run_bpf(program, NR["personality"], [4]) == EPERM


@needs_x86_64_libseccomp
def test_hardened_opens_gated_syscalls_with_their_capability():
    caps = list(defaults.HARDENED_CAPABILITIES) + ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE",
                                                   "CAP_SYS_BOOT"]
    program = _program(caps)
    for name in ("mount", "unshare", "ptrace", "reboot", "clone3"):
        assert run_bpf(program, NR[name]) == ALLOW, name
    assert run_bpf(program, NR["clone"], [CLONE_NEWUSER]) == ALLOW
    assert run_bpf(program, NR["keyctl"]) == EPERM
    without_chroot = _program(["CAP_CHOWN"])
    assert run_bpf(without_chroot, NR["chroot"]) == EPERM
