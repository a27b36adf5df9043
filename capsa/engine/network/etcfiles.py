"""The /etc/hosts, /etc/resolv.conf and /etc/hostname capsa writes for a container.

`build_*` are pure text builders; `apply_write_in_place` rewrites a file without replacing its
inode, because the engine bind-mounts these files and a rename would leave the container the old one.
"""
import os

from capsa.errors import NetworkError

_LOCALHOST = ("127.0.0.1\tlocalhost\n"
              "::1\tlocalhost ip6-localhost ip6-loopback\n")


def parse_add_host(spec):
    """--add-host NAME:IP (or NAME=IP) -> (name, ip); IP may be `host-gateway`."""
    import ipaddress
    sep = "=" if "=" in spec else ":"
    name, found, ip = spec.partition(sep)
    if not found or not name or not ip:
        raise NetworkError("%r is not NAME:IP" % (spec,), field="--add-host",
                           hint="write --add-host db:10.89.0.5")
    if any(c.isspace() or c == "#" for c in name):
        raise NetworkError("%r: bad host name %r" % (spec, name), field="--add-host")
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    if ip != "host-gateway":
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise NetworkError("%r: %r is not an IP address" % (spec, ip), field="--add-host")
    return name, ip


def check_dns_servers(servers):
    if not servers:
        return []
    import ipaddress
    for server in servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise NetworkError("%r is not an IP address" % (server,), field="--dns")
    return list(servers or ())


def build_hosts(own, peers=(), extra=()):
    """own and peers: [(ip, [names])]; extra: [(name, ip)] from --add-host."""
    lines = [_LOCALHOST]
    for ip, names in own:
        lines.append("%s\t%s\n" % (ip, " ".join(_unique(names))))
    for name, ip in extra:
        lines.append("%s\t%s\n" % (ip, name))
    for ip, names in peers:
        lines.append("%s\t%s\n" % (ip, " ".join(_unique(names))))
    return "".join(lines)


def build_host_mode_hosts(host_text, hostname, extra=()):
    """--network host: the host's own /etc/hosts, plus --add-host lines and the hostname."""
    text = host_text if host_text.endswith("\n") or not host_text else host_text + "\n"
    for name, ip in extra:
        text += "%s\t%s\n" % (ip, name)
    if hostname and hostname not in text.split():
        text += "127.0.1.1\t%s\n" % hostname
    return text


def _unique(names):
    seen = []
    for name in names:
        if name and name not in seen:
            seen.append(name)
    return seen


def _is_loopback(server):
    return server.startswith("127.") or server == "::1" or server == "0:0:0:0:0:0:0:1"


def build_resolv(host_text, dns=None, dns_search=None, keep_loopback=False):
    """The host's resolv.conf without loopback servers (unreachable from another netns)."""
    servers, search, options = [], [], []
    for line in host_text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            if keep_loopback or not _is_loopback(words[1]):
                servers.append(words[1])
        elif words[0] in ("search", "domain"):
            search = words[1:]
        elif words[0] == "options":
            options.extend(words[1:])
    if dns:
        servers = list(dns)
    if dns_search:
        search = [] if list(dns_search) == ["."] else list(dns_search)
    out = []
    if search:
        out.append("search " + " ".join(search))
    for server in servers:
        out.append("nameserver " + server)
    if options:
        out.append("options " + " ".join(options))
    return "\n".join(out) + "\n"


def apply_write_in_place(path, text):
    """Truncate and rewrite `path` keeping its inode; refuses symlinks (O_NOFOLLOW)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
