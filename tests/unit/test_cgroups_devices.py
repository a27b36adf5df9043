"""Device rules: validation, v1 allow/deny lines, and the eBPF program instruction by instruction."""
import pytest

from capsa.errors import ConfigError
from capsa.runtime.cgroups.devices import (ALU32_AND_K, ALU32_MOV_X, ALU32_RSH_K, ALU64_MOV_K,
                                           DEFAULT_ALLOWED, JMP_EXIT, JMP_JNE_K, LDX_MEM_W,
                                           build_bpf_bytes, build_bpf_program, build_bpf_verdict,
                                           build_device_rules, build_v1_device_update,
                                           build_v1_device_writes)

PROLOGUE = [(LDX_MEM_W, 2, 1, 0, 0), (ALU32_AND_K, 2, 0, 0, 0xFFFF), (LDX_MEM_W, 3, 1, 0, 0),
            (ALU32_RSH_K, 3, 0, 0, 16), (LDX_MEM_W, 4, 1, 4, 0), (LDX_MEM_W, 5, 1, 8, 0)]


def test_rules_are_normalised():
    rules = build_device_rules([{"allow": False, "access": "rwm"},
                                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "wr"}])
    assert rules == [[False, "a", -1, -1, "rwm"], [True, "c", 1, 3, "rw"]]


@pytest.mark.parametrize("rule,field", [
    ({"access": "rwm"}, "linux.resources.devices[0].allow"),
    ({"allow": True, "type": "x"}, "linux.resources.devices[0].type"),
    ({"allow": True, "major": "1"}, "linux.resources.devices[0].major"),
    ({"allow": True, "access": "rwx"}, "linux.resources.devices[0].access"),
])
def test_bad_rules_name_the_field(rule, field):
    with pytest.raises(ConfigError) as info:
        build_device_rules([rule])
    assert info.value.field == field


def test_v1_writes_deny_all_first_then_each_rule_in_order():
    rules = build_device_rules([{"allow": False, "access": "rwm"},
                                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
                                {"allow": False, "type": "b", "major": 8, "access": "m"}])
    assert build_v1_device_writes(rules) == [("devices.deny", "a"), ("devices.allow", "c 1:3 rw"),
                                             ("devices.deny", "b 8:* m")]
    # an allow-all rule restarts the list from "everything allowed"
    allow_all = build_device_rules([{"allow": True}])
    assert build_v1_device_writes(allow_all) == [("devices.allow", "a")]


def test_bpf_deny_all_then_allow_one_device():
    rules = build_device_rules([{"allow": False, "access": "rwm"},
                                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}])
    program = build_bpf_program(rules)
    # The last rule comes first; the deny-all rule matches everything and ends the program.
    assert program == PROLOGUE + [
        (JMP_JNE_K, 2, 0, 7, 2),                    # not a char device: next rule
        (ALU32_MOV_X, 1, 3, 0, 0),
        (ALU32_AND_K, 1, 0, 0, ~6),                 # asked for more than r and w: next rule
        (JMP_JNE_K, 1, 0, 4, 0),
        (JMP_JNE_K, 4, 0, 3, 1),
        (JMP_JNE_K, 5, 0, 2, 3),
        (ALU64_MOV_K, 0, 0, 0, 1), (JMP_EXIT, 0, 0, 0, 0),
        (ALU64_MOV_K, 0, 0, 0, 0), (JMP_EXIT, 0, 0, 0, 0),
    ]
    assert build_bpf_verdict(program, "c", 1, 3, "rw") == 1
    assert build_bpf_verdict(program, "c", 1, 3, "m") == 0
    assert build_bpf_verdict(program, "c", 1, 5, "r") == 0
    assert build_bpf_verdict(program, "b", 1, 3, "r") == 0


def test_bpf_wildcards_skip_their_checks_and_no_match_denies():
    rules = build_device_rules([{"allow": True, "type": "b", "access": "rwm"}])
    program = build_bpf_program(rules)
    assert program == PROLOGUE + [(JMP_JNE_K, 2, 0, 2, 1), (ALU64_MOV_K, 0, 0, 0, 1),
                                  (JMP_EXIT, 0, 0, 0, 0), (ALU64_MOV_K, 0, 0, 0, 0),
                                  (JMP_EXIT, 0, 0, 0, 0)]
    assert build_bpf_verdict(program, "b", 259, 0, "rwm") == 1
    assert build_bpf_verdict(program, "c", 1, 3, "r") == 0


def test_later_rules_win_over_earlier_ones():
    rules = build_device_rules([{"allow": True, "type": "c", "major": 1, "access": "rwm"},
                                {"allow": False, "type": "c", "major": 1, "minor": 5,
                                 "access": "w"}])
    program = build_bpf_program(rules)
    assert build_bpf_verdict(program, "c", 1, 5, "w") == 0
    assert build_bpf_verdict(program, "c", 1, 5, "r") == 1
    assert build_bpf_verdict(program, "c", 1, 3, "rw") == 1


def test_default_devices_allowed_after_deny_all():
    rules = build_device_rules([{"allow": False}]) + [list(r) for r in DEFAULT_ALLOWED]
    program = build_bpf_program(rules)
    for major, minor in ((1, 3), (1, 5), (1, 8), (1, 9), (5, 0), (5, 2), (136, 4)):
        assert build_bpf_verdict(program, "c", major, minor, "rw") == 1
    assert build_bpf_verdict(program, "c", 10, 200, "r") == 0     # /dev/net/tun
    assert build_bpf_verdict(program, "b", 8, 0, "m") == 1        # mknod of any node
    assert build_bpf_verdict(program, "b", 8, 0, "r") == 0


def test_bytes_encode_struct_bpf_insn_little_endian():
    data = build_bpf_bytes([(LDX_MEM_W, 2, 1, 4, 0), (ALU32_AND_K, 1, 0, 0, -7)])
    assert data == bytes([0x61, 0x12, 4, 0, 0, 0, 0, 0, 0x54, 0x01, 0, 0, 0xF9, 0xFF, 0xFF, 0xFF])


def test_v1_update_writes_only_the_difference_of_two_allow_lists():
    old = build_device_rules([{"allow": False}, {"allow": True, "type": "c", "major": 1,
                                                 "minor": 3, "access": "rwm"},
                              {"allow": True, "type": "c", "major": 10, "minor": 200}])
    new = build_device_rules([{"allow": False}, {"allow": True, "type": "c", "major": 1,
                                                 "minor": 3, "access": "rwm"},
                              {"allow": True, "type": "b", "major": 8, "access": "r"}])
    assert build_v1_device_update(old, new) == [("devices.deny", "c 10:200 rwm"),
                                                ("devices.allow", "b 8:* r")]
    # any other shape is rewritten from scratch
    mixed = new + build_device_rules([{"allow": False, "type": "c", "major": 1, "minor": 3}])
    assert build_v1_device_update(old, mixed) == build_v1_device_writes(mixed)
