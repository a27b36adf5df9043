"""Network definitions: names, subnets, bridge names and the CNI conflist capsa writes per network.

Pure: builds and checks plain dicts from arguments; the caller passes in host facts (routes, link
names). Must not import subprocess, capsa.syscalls or anything that touches the host.
"""
from capsa.errors import NetworkError

CNI_VERSION = "1.0.0"
DEFAULT_NETWORK = "capsa"
# Mode words of --network; a user network by one of these names could never be chosen.
RESERVED = ("none", "host", "bridge", "default", "container", "ns", "private", "slirp4netns",
            "pasta", DEFAULT_NETWORK)
DRIVERS = ("bridge", "macvlan")
# Beside podman's 10.88.0.0/16 (netavark does not check host routes, so never take it), then
# /24s from a pool the tests also draw from (10.89.0.0/16+).
DEFAULT_SUBNETS = ("10.87.0.0/16",)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def check_name(name, field="network name", reserved=True):
    """A network or container name: [A-Za-z0-9][A-Za-z0-9_.-]{0,63}; mode words are refused."""
    if not name or len(name) > 64 or not name[0].isalnum() or not name.isascii() \
            or not set(name) <= _NAME_CHARS:
        raise NetworkError("%r is not a valid name" % (name,), field=field,
                           hint="use 1-64 letters, digits, '_', '.', '-', starting with a letter or digit")
    if reserved and name in RESERVED:
        raise NetworkError("%r is reserved for a --network mode" % name, field=field,
                           hint="pick another name")
    return name


def parse_subnet(text, field="--subnet"):
    import ipaddress
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise NetworkError("%r is not a subnet" % (text,), field=field, hint="write it as 10.89.1.0/24")
    if net.version != 4:
        raise NetworkError("%s: only IPv4 subnets are supported" % text, field=field)
    if "/" not in text:
        raise NetworkError("%s has no prefix length" % text, field=field, hint="write it as %s/24" % text)
    if ipaddress.ip_address(text.split("/")[0]) != net.network_address:
        raise NetworkError("%s has host bits set" % text, field=field, hint="use %s" % net)
    if net.prefixlen > 30:
        raise NetworkError("%s is too small for a gateway and a container" % text, field=field,
                           hint="use a prefix of /30 or shorter")
    return net


def parse_address(text, field):
    import ipaddress
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise NetworkError("%r is not an IP address" % (text,), field=field)
    return addr


def check_in_subnet(addr, net, field):
    if addr not in net or addr in (net.network_address, net.broadcast_address):
        raise NetworkError("%s is not a usable address of %s" % (addr, net), field=field,
                           hint="pick an address between %s and %s" % (net.network_address + 1,
                                                                         net.broadcast_address - 1))


def parse_mtu(value, field="--mtu"):
    try:
        mtu = int(value)
    except (TypeError, ValueError):
        raise NetworkError("%r is not a number" % (value,), field=field)
    if not 68 <= mtu <= 65535:
        raise NetworkError("%d is out of range" % mtu, field=field, hint="use 68 to 65535")
    return mtu


def find_overlap(net, networks, routes):
    """The first thing `net` collides with: ("network", name, subnet) or ("route", dev, subnet), else None.

    `networks` is [(name, subnet-text)], `routes` [(subnet-text, dev)] from the host table; default
    routes (prefix 0) cover everything and are skipped.
    """
    import ipaddress
    for name, subnet in networks:
        other = ipaddress.ip_network(subnet)
        if other.version == net.version and net.overlaps(other):
            return ("network", name, subnet)
    for subnet, dev in routes:
        other = ipaddress.ip_network(subnet, strict=False)
        if other.prefixlen == 0 or other.version != net.version:
            continue
        if net.overlaps(other):
            return ("route", dev, subnet)
    return None


def check_no_overlap(net, networks, routes, field="--subnet"):
    hit = find_overlap(net, networks, routes)
    if hit is None:
        return
    if hit[0] == "network":
        raise NetworkError("%s overlaps network %r (%s)" % (net, hit[1], hit[2]), field=field,
                           hint="pick another --subnet")
    raise NetworkError("%s overlaps the host route %s on %s" % (net, hit[2], hit[1]), field=field,
                       hint="pick another --subnet")


def build_free_subnet(networks, routes, candidates=None):
    """The first candidate that collides with neither a network nor a host route."""
    import ipaddress
    for text in candidates or ():
        net = ipaddress.ip_network(text)
        if find_overlap(net, networks, routes) is None:
            return net
    for second in range(89, 256):
        for third in range(256):
            net = ipaddress.ip_network("10.%d.%d.0/24" % (second, third))
            if find_overlap(net, networks, routes) is None:
                return net
    raise NetworkError("no free /24 left in 10.89.0.0-10.255.255.0", field="--subnet",
                       hint="pass --subnet")


def build_bridge_name(used):
    """capsa0, capsa1, ...: the first name neither a host link nor another network's bridge."""
    index = 0
    while "capsa%d" % index in used:
        index += 1
    return "capsa%d" % index


def build_network(name, subnet, gateway=None, ip_range=None, internal=False, mtu=None,
                  driver="bridge", device=None, ipam_dir=None, created=None, default=False):
    """The conflist of one network; capsa's own facts ride in its "capsa" key (plugins never see it)."""
    if driver not in DRIVERS:
        raise NetworkError("unknown driver %r" % (driver,), field="--driver",
                           hint="use one of: " + ", ".join(DRIVERS))
    net = parse_subnet(subnet) if isinstance(subnet, str) else subnet
    if gateway is None:
        gw = net.network_address + 1
    else:
        gw = parse_address(gateway, "--gateway")
        check_in_subnet(gw, net, "--gateway")
    span = {"subnet": str(net), "gateway": str(gw)}
    if ip_range:
        rng = parse_subnet(ip_range, "--ip-range")
        if not rng.subnet_of(net):
            raise NetworkError("%s is not inside the subnet %s" % (rng, net), field="--ip-range")
        span["rangeStart"] = str(max(rng.network_address, net.network_address + 1))
        span["rangeEnd"] = str(min(rng.broadcast_address, net.broadcast_address - 1))
    if mtu is not None:
        mtu = parse_mtu(mtu)
    ipam = {"type": "host-local", "ranges": [[span]], "routes": []}
    if ipam_dir:
        ipam["dataDir"] = ipam_dir
    if not internal:
        ipam["routes"] = [{"dst": "0.0.0.0/0"}]
    plugins = []
    if driver == "bridge":
        main = {"type": "bridge", "bridge": device, "isGateway": not internal, "ipMasq": not internal,
                "hairpinMode": True, "ipam": ipam, "capabilities": {"ips": True}}
    else:
        if not device:
            raise NetworkError("the macvlan driver needs a parent interface", field="--opt parent",
                               hint="pass -o parent=IFNAME")
        main = {"type": "macvlan", "master": device, "mode": "bridge", "ipam": ipam,
                "capabilities": {"ips": True}}
    if mtu is not None:
        main["mtu"] = mtu
    plugins.append(main)
    if driver == "bridge" and not internal:
        plugins.append({"type": "portmap", "snat": True, "capabilities": {"portMappings": True}})
        plugins.append({"type": "firewall", "backend": "iptables"})
    plugins.append({"type": "tuning", "capabilities": {"mac": True}})
    return {"cniVersion": CNI_VERSION, "name": name, "plugins": plugins,
            "capsa": {"driver": driver, "subnet": str(net), "gateway": str(gw),
                      "ip_range": str(ip_range) if ip_range else None, "internal": bool(internal),
                      "mtu": mtu, "device": device, "created": created, "default": bool(default)}}


def read_facts(conflist):
    """capsa's facts of a conflist: driver, subnet, gateway, ip_range, internal, mtu, device."""
    facts = conflist.get("capsa")
    if not isinstance(facts, dict) or "subnet" not in facts:
        raise NetworkError("network %r has no capsa facts: not written by capsa" % conflist.get("name"),
                           hint="remove the file or recreate the network")
    return facts


def network_view(conflist, containers):
    """The dict `capsa network inspect` prints and NetworkManager.inspect returns."""
    facts = read_facts(conflist)
    return {"name": conflist["name"], "driver": facts["driver"], "subnet": facts["subnet"],
            "gateway": facts["gateway"], "ip_range": facts.get("ip_range"),
            "internal": facts["internal"], "mtu": facts.get("mtu"),
            "bridge" if facts["driver"] == "bridge" else "parent": facts.get("device"),
            "created": facts.get("created"), "default": facts.get("default", False),
            "plugins": [p["type"] for p in conflist["plugins"]], "containers": containers}
