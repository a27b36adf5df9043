"""Device access rules of a container's cgroup: OCI rules → v1 devices.allow/deny writes, or an
eBPF BPF_PROG_TYPE_CGROUP_DEVICE program (instructions built here, in Python) for cgroup v2.

Pure: imports only errors. Rules are lists [allow, type, major, minor, access], -1 = wildcard.
"""
from capsa.errors import ConfigError

# The devices every container gets whatever its rules say (runtime-spec "Default Devices",
# plus /dev/pts/* and mknod of any char/block node as runc allows).
DEFAULT_ALLOWED = (
    [True, "c", -1, -1, "m"], [True, "b", -1, -1, "m"],
    [True, "c", 1, 3, "rwm"], [True, "c", 1, 5, "rwm"], [True, "c", 1, 7, "rwm"],
    [True, "c", 1, 8, "rwm"], [True, "c", 1, 9, "rwm"], [True, "c", 5, 0, "rwm"],
    [True, "c", 5, 1, "rwm"], [True, "c", 5, 2, "rwm"], [True, "c", 136, -1, "rwm"],
)

# <linux/bpf.h>: struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; },
# access_type = (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*.
DEV_BLOCK = 1
DEV_CHAR = 2
ACC_MKNOD = 1
ACC_READ = 2
ACC_WRITE = 4
_ACCESS_BITS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}

# eBPF opcodes (<linux/bpf_common.h>, <linux/bpf.h>).
LDX_MEM_W = 0x61      # BPF_LDX | BPF_MEM | BPF_W
ALU32_AND_K = 0x54    # BPF_ALU | BPF_AND | BPF_K
ALU32_RSH_K = 0x74    # BPF_ALU | BPF_RSH | BPF_K
ALU32_MOV_X = 0xBC    # BPF_ALU | BPF_MOV | BPF_X
ALU64_MOV_K = 0xB7    # BPF_ALU64 | BPF_MOV | BPF_K
JMP_JNE_K = 0x55      # BPF_JMP | BPF_JNE | BPF_K
JMP_EXIT = 0x95       # BPF_JMP | BPF_EXIT


def build_device_rules(devices, field="linux.resources.devices"):
    """Validate OCI device cgroup rules into [allow, type, major, minor, access] lists."""
    if devices is None:
        return []
    if not isinstance(devices, list):
        raise ConfigError("must be a list of device rules", field=field)
    rules = []
    for index, rule in enumerate(devices):
        where = "%s[%d]" % (field, index)
        if not isinstance(rule, dict) or not isinstance(rule.get("allow"), bool):
            raise ConfigError("each rule needs \"allow\": true or false", field=where + ".allow")
        kind = rule.get("type") or "a"
        if kind not in ("a", "c", "b"):
            raise ConfigError("type %r is not a, c or b" % (kind,), field=where + ".type")
        numbers = []
        for key in ("major", "minor"):
            value = rule.get(key)
            if value is None:
                value = -1
            if type(value) is not int or value < -1 or value > 0x7FFFFFFF:
                raise ConfigError("%r is not a device number (use -1 or leave it out for any)"
                                  % (value,), field=where + "." + key)
            numbers.append(value)
        access = rule.get("access") or "rwm"
        if not isinstance(access, str) or not set(access) <= set("rwm"):
            raise ConfigError("access %r must be letters of \"rwm\"" % (access,),
                              field=where + ".access")
        access = "".join(letter for letter in "rwm" if letter in access)
        rules.append([rule["allow"], kind, numbers[0], numbers[1], access])
    return rules


def build_device_line(rule):
    """The v1 devices.allow/devices.deny line of one rule: "c 1:3 rwm" or "a"."""
    allow, kind, major, minor, access = rule
    if kind == "a" and major == -1 and minor == -1 and access == "rwm":
        return "a"
    return "%s %s:%s %s" % (kind, "*" if major == -1 else major, "*" if minor == -1 else minor,
                            access)


def build_v1_device_writes(rules):
    """[(file, line)] for a fresh v1 devices cgroup: deny everything first, then each rule in
    order, so later rules override earlier ones as the runtime-spec asks."""
    writes = [("devices.deny", "a")]
    for rule in rules:
        if rule[1] == "a" and rule[2] == -1 and rule[3] == -1 and rule[4] == "rwm":
            writes = [("devices.allow" if rule[0] else "devices.deny", "a")]
            continue
        writes.append(("devices.allow" if rule[0] else "devices.deny", build_device_line(rule)))
    return writes


def _allow_list(rules):
    """The exceptions of a "deny all, then allow these" list (the deny-all may be implicit:
    every list starts from deny-all here), or None for any other shape."""
    if rules and build_device_line(rules[0]) == "a" and not rules[0][0]:
        rules = rules[1:]
    allowed = []
    for rule in rules:
        if not rule[0] or rule[1] == "a":
            return None
        line = build_device_line(rule)
        if line not in allowed:
            allowed.append(line)
    return allowed


def build_v1_device_update(old_rules, new_rules):
    """[(file, line)] taking a live v1 devices cgroup from old_rules to new_rules. When both
    are "deny all, allow these", only the difference is written: resetting with "deny a"
    would fail every open() in the container for a moment (runc emulates the same way)."""
    old, new = _allow_list(old_rules), _allow_list(new_rules)
    if old is None or new is None:
        return build_v1_device_writes(new_rules)
    writes = [("devices.deny", line) for line in old if line not in new]
    return writes + [("devices.allow", line) for line in new if line not in old]


def _insn(code, dst=0, src=0, off=0, imm=0):
    return (code, dst, src, off, imm)


def build_bpf_program(rules):
    """The device filter as eBPF instructions (code, dst, src, off, imm).

    R2 = device type, R3 = requested access bits, R4 = major, R5 = minor. The rules are
    checked last to first so the first match in the program is the last match of the list
    (runtime-spec: later rules win); no match denies. Returns 1 to allow, 0 to deny.
    """
    prologue = [
        _insn(LDX_MEM_W, 2, 1, 0), _insn(ALU32_AND_K, 2, imm=0xFFFF),
        _insn(LDX_MEM_W, 3, 1, 0), _insn(ALU32_RSH_K, 3, imm=16),
        _insn(LDX_MEM_W, 4, 1, 4), _insn(LDX_MEM_W, 5, 1, 8),
    ]
    blocks = []
    for allow, kind, major, minor, access in reversed(rules):
        checks = []
        if kind != "a":
            checks.append([JMP_JNE_K, 2, DEV_CHAR if kind == "c" else DEV_BLOCK])
        mask = 0
        for letter in access:
            mask |= _ACCESS_BITS[letter]
        if mask != ACC_MKNOD | ACC_READ | ACC_WRITE:
            # Matches only when every requested bit is in the rule: (R3 & ~mask) == 0.
            checks.append("access")
        if major != -1:
            checks.append([JMP_JNE_K, 4, major])
        if minor != -1:
            checks.append([JMP_JNE_K, 5, minor])
        body = []
        for check in checks:
            if check == "access":
                body.append([ALU32_MOV_X, 1, 3, None, 0])
                body.append([ALU32_AND_K, 1, 0, None, (~mask) & 0xFFFFFFFF])
                body.append([JMP_JNE_K, 1, 0, "next", 0])
            else:
                body.append([check[0], check[1], 0, "next", check[2]])
        body.append([ALU64_MOV_K, 0, 0, None, 1 if allow else 0])
        body.append([JMP_EXIT, 0, 0, None, 0])
        blocks.append(body)
        if not checks:
            break  # a rule matching everything: nothing after it can be reached
    program = list(prologue)
    for body in blocks:
        for position, (code, dst, src, off, imm) in enumerate(body):
            if off == "next":
                off = len(body) - position - 1
            program.append(_insn(code, dst, src, off or 0, _s32(imm)))
    if not blocks or _has_checks(blocks[-1]):
        program += [_insn(ALU64_MOV_K, 0, imm=0), _insn(JMP_EXIT)]
    return program


def _has_checks(body):
    return len(body) > 2


def _s32(value):
    value &= 0xFFFFFFFF
    return value - 0x100000000 if value & 0x80000000 else value


def build_bpf_bytes(program):
    """struct bpf_insn[]: u8 code, u8 dst:4|src:4 (little-endian bitfields), s16 off, s32 imm."""
    import struct
    return b"".join(struct.pack("<BBhi", code, (src << 4) | dst, off, imm)
                    for code, dst, src, off, imm in program)


def build_bpf_verdict(program, kind, major, minor, access):
    """Run the program on one request, as the kernel would: 1 allow, 0 deny. For tests and
    `capsa-runtime features`-style self checks; knows exactly the opcodes build_bpf_program uses."""
    acc = 0
    for letter in access:
        acc |= _ACCESS_BITS[letter]
    ctx = (((acc << 16) | (DEV_CHAR if kind == "c" else DEV_BLOCK)), major, minor)
    regs = [0] * 11
    pc = 0
    while True:
        code, dst, src, off, imm = program[pc]
        pc += 1
        if code == LDX_MEM_W:
            regs[dst] = ctx[off // 4]
        elif code == ALU32_AND_K:
            regs[dst] = regs[dst] & imm & 0xFFFFFFFF
        elif code == ALU32_RSH_K:
            regs[dst] = (regs[dst] & 0xFFFFFFFF) >> imm
        elif code == ALU32_MOV_X:
            regs[dst] = regs[src] & 0xFFFFFFFF
        elif code == ALU64_MOV_K:
            regs[dst] = imm
        elif code == JMP_JNE_K:
            if regs[dst] != (imm & 0xFFFFFFFFFFFFFFFF):
                pc += off
        elif code == JMP_EXIT:
            return regs[0]
        else:
            raise ValueError("opcode %#x" % code)
