"""iptables rules the CNI plugins tagged with one container: finding them in iptables-save text.

The bridge plugin removes its masquerade rules only while the container's namespace still exists
(it reads the addresses from the interface); after a reboot or a lost namespace they stay. Every
such rule carries the comment `name: "NET" id: "ID"` (plugins' utils.FormatComment), so capsa can
remove exactly what belongs to one container. Pure: text in, argument lists out.
"""

# Chains the plugins share between all containers: never flushed or deleted by capsa.
SHARED_CHAINS = frozenset(("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK",
                           "CNI-FORWARD", "CNI-ADMIN", "CNI-HOSTPORT-SNAT"))
_HEX = frozenset("0123456789abcdef")


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


def build_rule_deletions(save_text, tag):
    """-> (rules, chains): each rule as the iptables arguments after `-D`, and the per-container
    chains those rules jump to (to flush and delete afterwards)."""
    import shlex
    rules, chains = [], []
    for line in save_text.splitlines():
        if not line.startswith("-A ") or tag not in line:
            continue
        args = shlex.split(line)[1:]
        rules.append(args)
        if "-j" in args[:-1]:
            target = args[args.index("-j") + 1]
            if _per_container_chain(target) and target not in chains:
                chains.append(target)
    return rules, chains
