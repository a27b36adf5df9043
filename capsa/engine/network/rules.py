"""iptables rules the CNI plugins made for one container: found in iptables-save text and turned
into one iptables-restore --noflush script (or, as a fallback, one iptables call per line).

The bridge plugin tags its masquerade rules with the comment `name: "NET" id: "ID"`
(plugins' utils.FormatComment); the firewall plugin's two CNI-FORWARD rules carry no comment and
are matched by the container's address. Pure: text in, text and argument lists out.
"""

# Chains the plugins share between all containers: never flushed or deleted by capsa.
SHARED_CHAINS = frozenset(("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK",
                           "CNI-FORWARD", "CNI-ADMIN", "CNI-HOSTPORT-SNAT"))
_HEX = frozenset("0123456789abcdef")
# firewall plugin (iptables backend) getPrivChainRules, as iptables-save prints them
_FIREWALL_RULES = ("-A CNI-FORWARD -d %s/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                   "-A CNI-FORWARD -s %s/32 -j ACCEPT")


def build_tag(network, container_id):
    """The comment text as iptables-save prints it (quotes escaped)."""
    return 'name: \\"%s\\" id: \\"%s\\"' % (network, container_id)


def _per_container_chain(name):
    if name in SHARED_CHAINS or not name.startswith("CNI-"):
        return False
    rest = name[4:]
    for prefix in ("DN-", "SN-"):
        if rest.startswith(prefix):
            rest = rest[3:]
    return len(rest) >= 16 and set(rest) <= _HEX


def _jump_target(line):
    words = line.split()
    if "-j" in words[:-1]:
        return words[words.index("-j") + 1]
    return None


def build_rule_removals(save_text, tags, addresses=()):
    """-> [(table, restore line)]: `-D` of every rule carrying one of `tags` and of the firewall
    plugin's rules for `addresses` (IPv4 texts), then `-F`/`-X` of the per-container chains the
    tagged rules jump to. Lines keep iptables-save's quoting, so they are valid restore input."""
    firewall = set(rule % address for address in addresses for rule in _FIREWALL_RULES)
    removals, chains = [], []
    table = None
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        if not line.startswith("-A "):
            continue
        tagged = any(tag in line for tag in tags)
        if tagged or (table == "filter" and line in firewall):
            removals.append((table, "-D " + line[3:]))
        if tagged:
            target = _jump_target(line)
            if target and _per_container_chain(target) and (table, target) not in chains:
                chains.append((table, target))
    for table, chain in chains:
        removals.append((table, "-F " + chain))
        removals.append((table, "-X " + chain))
    return removals


def build_still_present(save_text, removals):
    """The rules and chains of build_rule_removals' list that `save_text` still shows."""
    lines = save_text.splitlines()
    rules = set(lines)
    chains = set(l.split(" ", 1)[0][1:] for l in lines if l.startswith(":"))
    present = []
    for table, line in removals:
        if line.startswith("-D ") and "-A " + line[3:] in rules:
            present.append((table, line))
        elif line.startswith("-X ") and line[3:] in chains:
            present.append((table, line))
    return present


def build_restore(removals):
    """iptables-restore input for build_rule_removals' list: one COMMIT per table (atomic)."""
    text = []
    for table in sorted(set(t for t, _ in removals)):
        text.append("*" + table)
        text.extend(line for t, line in removals if t == table)
        text.append("COMMIT")
    return "\n".join(text) + "\n" if text else ""


def build_rule_deletions(save_text, tag):
    """-> (rules, chains) for one table's save text: each tagged rule as the iptables arguments
    after `-D`, and the per-container chains those rules jump to (to flush and delete after)."""
    import shlex
    rules, chains = [], []
    for line in save_text.splitlines():
        if not line.startswith("-A ") or tag not in line:
            continue
        args = shlex.split(line)[1:]
        rules.append(args)
        target = _jump_target(line)
        if target and _per_container_chain(target) and target not in chains:
            chains.append(target)
    return rules, chains


# firewall plugin setupChains: the jumps that make its CNI-FORWARD rules take effect
_FIREWALL_JUMPS = ('-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD',
                   '-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" '
                   '-j CNI-ADMIN')


def build_firewall_adds(filter_save_text, addresses):
    """The restore lines that append the firewall plugin's ADD rules for `addresses`, when its
    chains and jumps exist already (they stay once made); None when they do not, so the plugin
    itself must run. Rules present already are not appended twice (the plugin's AppendUnique)."""
    lines = set(filter_save_text.splitlines())
    # iptables-save prints a user chain as ":NAME - [packets:bytes]"
    if not any(l.startswith(":CNI-ADMIN ") for l in lines) or \
            not all(j in lines for j in _FIREWALL_JUMPS):
        return None
    return [rule % address for address in addresses for rule in _FIREWALL_RULES
            if rule % address not in lines]


def build_chain_name(network, container_id):
    """utils.FormatChainName of the plugins: "CNI-" and sha512(name + id) in hex, 28 characters."""
    try:
        from _sha512 import sha512  # builtin; hashlib loads OpenSSL (3 ms)
    except ImportError:
        from hashlib import sha512
    return ("CNI-" + sha512((network + container_id).encode()).hexdigest())[:28]


def _subnet(address):
    ip, _, prefix = address.partition("/")
    value = 0
    for part in ip.split("."):
        value = value * 256 + int(part)
    bits = int(prefix or 32)
    value &= (0xffffffff << (32 - bits)) & 0xffffffff
    return "%s/%d" % (".".join(str(value >> shift & 255) for shift in (24, 16, 8, 0)), bits)


def build_container_rules(save_text, network, container_id, masquerade=(), firewall=()):
    """-> ([(table, restore line)], firewall_ready): the bridge plugin's ipMasq rules
    (ip.SetupIPMasq) for `masquerade` ("IP/PREFIX" texts), and the firewall plugin's ADD rules
    for `firewall` (IPv4 texts) when its chains exist (firewall_ready; else its plugin must run).
    Lines are in iptables-save's form, so rules present already are not added twice (the
    plugins' AppendUnique)."""
    lines = set(save_text.splitlines())
    adds = []
    if masquerade:
        chain = build_chain_name(network, container_id)
        comment = '-m comment --comment "%s"' % build_tag(network, container_id)
        if not any(l.startswith(":%s " % chain) for l in lines):
            adds.append(("nat", ":%s - [0:0]" % chain))
        for address in masquerade:
            adds.extend(("nat", rule) for rule in (
                "-A %s -d %s %s -j ACCEPT" % (chain, _subnet(address), comment),
                "-A %s ! -d 224.0.0.0/4 %s -j MASQUERADE" % (chain, comment),
                "-A POSTROUTING -s %s/32 %s -j %s" % (address.partition("/")[0], comment, chain)))
    ready = True
    if firewall:
        wanted = build_firewall_adds(save_text, firewall)
        ready = wanted is not None
        adds.extend(("filter", rule) for rule in wanted or ())
    unique = []
    for add in adds:
        if add[1] not in lines and add not in unique:
            unique.append(add)
    return unique, ready
