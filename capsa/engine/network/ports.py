"""Published ports: parsing `-p [IP:][HOST:]CTR[/tcp|udp]` and `-P` into CNI portMappings.

Pure: strings in, plain dicts out; whether a host port is free is asked by the caller.
Must not import subprocess, socket or capsa.syscalls.
"""
from capsa.errors import NetworkError

PROTOCOLS = ("tcp", "udp")


def _port_span(text, spec, what):
    first, sep, last = text.partition("-")
    try:
        low = int(first)
        high = int(last) if sep else low
    except ValueError:
        raise NetworkError("%r: %s port %r is not a number" % (spec, what, text), field="--publish",
                           hint="write -p [IP:][HOST:]CONTAINER[/tcp|udp], e.g. -p 8080:80")
    if not (1 <= low <= high <= 65535) and not (what == "host" and low == high == 0):
        raise NetworkError("%r: %s port %r is out of range" % (spec, what, text), field="--publish",
                           hint="use 1-65535")
    return list(range(low, high + 1))


def parse_publish(spec):
    """One -p value -> [{"hostIP", "hostPort" (0 = pick one), "containerPort", "protocol"}]."""
    import ipaddress
    text, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in PROTOCOLS:
        raise NetworkError("%r: protocol %r is not supported" % (spec, proto), field="--publish",
                           hint="use tcp or udp")
    host_ip = ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise NetworkError("%r: unclosed [IPv6] address" % spec, field="--publish")
        host_ip, text = text[1:end], text[end + 2:]
    parts = text.split(":")
    if len(parts) == 3 and not host_ip:
        host_ip, host, ctr = parts
    elif len(parts) == 2:
        host, ctr = parts
    elif len(parts) == 1:
        host, ctr = "", parts[0]
    else:
        raise NetworkError("%r has too many ':'" % spec, field="--publish",
                           hint="write -p [IP:][HOST:]CONTAINER[/tcp|udp]")
    if host_ip:
        try:
            addr = ipaddress.ip_address(host_ip)
        except ValueError:
            raise NetworkError("%r: %r is not an IP address" % (spec, host_ip), field="--publish")
        if addr.version != 4:
            raise NetworkError("%r: only IPv4 host addresses are supported" % spec, field="--publish")
        if addr.is_unspecified:
            host_ip = ""
    ctr_ports = _port_span(ctr, spec, "container")
    host_ports = _port_span(host, spec, "host") if host else [0] * len(ctr_ports)
    if len(host_ports) != len(ctr_ports):
        raise NetworkError("%r: host and container ranges differ in length" % spec, field="--publish")
    return [{"hostIP": host_ip, "hostPort": h, "containerPort": c, "protocol": proto}
            for h, c in zip(host_ports, ctr_ports)]


def parse_expose(spec):
    """An image's ExposedPorts key ("80/tcp", "53/udp", "8000-8002") -> [(port, proto)]."""
    text, _, proto = str(spec).partition("/")
    proto = proto or "tcp"
    if proto not in PROTOCOLS:
        raise NetworkError("exposed port %r: protocol %r is not supported" % (spec, proto),
                           field="ExposedPorts")
    return [(port, proto) for port in _port_span(text, spec, "container")]


def build_port_mappings(publish, expose=(), publish_all=False):
    """-p values plus, with -P, every exposed port not already published (host port 0 = pick)."""
    mappings = []
    for spec in publish or ():
        mappings.extend(parse_publish(spec))
    if publish_all:
        done = set((m["containerPort"], m["protocol"]) for m in mappings)
        for spec in expose or ():
            for port, proto in parse_expose(spec):
                if (port, proto) not in done:
                    done.add((port, proto))
                    mappings.append({"hostIP": "", "hostPort": 0, "containerPort": port,
                                     "protocol": proto})
    seen = {}
    for m in mappings:
        key = (m["hostIP"], m["hostPort"], m["protocol"])
        if m["hostPort"] and key in seen:
            raise NetworkError("host port %s/%s is published twice" % (m["hostPort"], m["protocol"]),
                               field="--publish")
        seen[key] = m
    return mappings


def clash(mapping, other):
    """Do two mappings ask for the same host port (an empty hostIP means every address)?"""
    return (mapping["hostPort"] == other["hostPort"] and mapping["protocol"] == other["protocol"]
            and (not mapping["hostIP"] or not other["hostIP"] or mapping["hostIP"] == other["hostIP"]))


def format_mapping(mapping):
    """80/tcp -> 0.0.0.0:8080, as `capsa port` prints it."""
    return "%d/%s -> %s:%d" % (mapping["containerPort"], mapping["protocol"],
                               mapping["hostIP"] or "0.0.0.0", mapping["hostPort"])
