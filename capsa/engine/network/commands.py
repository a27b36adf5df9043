"""`capsa network create|ls|inspect|rm|connect|disconnect|prune` and `capsa port`.

Thin: parse argv, call NetworkManager, print. Errors are raised as CapsaError for the CLI to print.
Imports the manager lazily; no argparse (13 ms of start-up).
"""
import os

from capsa.errors import UsageError

_USAGE = """usage: capsa network COMMAND
  create [--subnet CIDR] [--gateway IP] [--ip-range CIDR] [--internal] [--mtu N]
         [-d bridge|macvlan] [-o parent=IF] [-o mtu=N] NAME
  ls [-q] [--format json]
  inspect NAME...
  rm NAME...
  connect [--alias NAME]... [--ip IP] NETWORK CONTAINER
  disconnect NETWORK CONTAINER
  prune [-f]
"""


_CREATE = (("--subnet", "subnet", "str"), ("--gateway", "gateway", "str"),
           ("--ip-range", "ip_range", "str"), ("--internal", "internal", "bool"),
           ("--mtu", "mtu", "str"), ("-d --driver", "driver", "str"), ("-o --opt", "opt", "list"))
_LS = (("-q --quiet", "quiet", "bool"), ("--format", "format", "str"))
_CONNECT = (("--alias", "aliases", "list"), ("--ip", "ip", "str"))
_FORCE = (("-f --force", "force", "bool"),)


def _manager(ctx):
    given = getattr(ctx, "network_manager", None)
    if given is not None:
        return given
    from capsa.engine.network.manager import NetworkManager
    root = getattr(ctx, "network_root", None) or os.path.join(ctx.store_root, "network")
    return NetworkManager(root)


def _parse(argv, table, command, max_positionals=None):
    from capsa.engine.options import parse_options
    return parse_options(argv, table, command, interspersed=True, max_positionals=max_positionals)


def _print_json(ctx, data):
    import json
    ctx.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _create(ctx, argv):
    opts, names = _parse(argv, _CREATE, "network create", 1)
    if len(names) != 1:
        raise UsageError("network create takes one NAME", hint="capsa network create [flags] NAME")
    parent = None
    for opt in opts.pop("opt"):
        key, _, value = opt.partition("=")
        if key == "parent":
            parent = value
        elif key == "mtu":
            opts["mtu"] = value
        else:
            raise UsageError("unknown -o %s" % key, hint="use -o parent=IF or -o mtu=N")
    view = _manager(ctx).create(names[0], subnet=opts.get("subnet"), gateway=opts.get("gateway"),
                                ip_range=opts.get("ip_range"), internal=opts["internal"],
                                mtu=opts.get("mtu"), driver=opts["driver"] or "bridge", parent=parent)
    ctx.stdout.write(view["name"] + "\n")
    return 0


def _ls(ctx, argv):
    opts, rest = _parse(argv, _LS, "network ls", 0)
    networks = _manager(ctx).list()
    if opts.get("format") == "json":
        _print_json(ctx, networks)
        return 0
    if opts.get("format"):
        raise UsageError("unknown --format %s" % opts["format"], hint="use --format json")
    if opts.get("quiet"):
        ctx.stdout.write("".join(n["name"] + "\n" for n in networks))
        return 0
    rows = [("NAME", "DRIVER", "SUBNET", "GATEWAY", "INTERNAL", "CONTAINERS")]
    for n in networks:
        rows.append((n["name"], n["driver"], n["subnet"], n["gateway"],
                     "yes" if n["internal"] else "no", str(len(n["containers"]))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        ctx.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
    return 0


def _inspect(ctx, argv):
    if not argv:
        raise UsageError("network inspect needs a NAME")
    manager = _manager(ctx)
    _print_json(ctx, [manager.inspect(name) for name in argv])
    return 0


def _rm(ctx, argv):
    if not argv:
        raise UsageError("network rm needs a NAME")
    manager = _manager(ctx)
    for name in argv:
        manager.remove(name)
        ctx.stdout.write(name + "\n")
    return 0


def _connect(ctx, argv):
    opts, rest = _parse(argv, _CONNECT, "network connect")
    if len(rest) != 2:
        raise UsageError("network connect takes NETWORK CONTAINER")
    _manager(ctx).connect(rest[1], rest[0], aliases=opts.get("aliases"), ip=opts.get("ip"))
    return 0


def _disconnect(ctx, argv):
    opts, rest = _parse(argv, _FORCE, "network disconnect")
    if len(rest) != 2:
        raise UsageError("network disconnect takes NETWORK CONTAINER")
    _manager(ctx).disconnect(rest[1], rest[0])
    return 0


def _prune(ctx, argv):
    _parse(argv, _FORCE, "network prune", 0)
    for name in _manager(ctx).prune():
        ctx.stdout.write(name + "\n")
    return 0


_COMMANDS = {"create": _create, "ls": _ls, "list": _ls, "inspect": _inspect, "rm": _rm,
             "remove": _rm, "connect": _connect, "disconnect": _disconnect, "prune": _prune}


def cmd_network(ctx, argv):
    if not argv or argv[0] in ("-h", "--help", "help"):
        ctx.stdout.write(_USAGE)
        return 0 if argv else 2
    command = _COMMANDS.get(argv[0])
    if command is None:
        raise UsageError("unknown network command %r" % argv[0], hint="see `capsa network --help`")
    return command(ctx, list(argv[1:]))


def cmd_port(ctx, argv):
    """capsa port CONTAINER [PORT[/PROTO]]: the host addresses a container's ports are published on."""
    if not argv or argv[0] in ("-h", "--help"):
        ctx.stdout.write("usage: capsa port CONTAINER [PRIVATE_PORT[/PROTO]]\n")
        return 0 if argv else 2
    if len(argv) > 2:
        raise UsageError("port takes CONTAINER [PRIVATE_PORT[/PROTO]]")
    from capsa.engine.network.ports import format_mapping
    ports = _manager(ctx).container(argv[0])["ports"]
    if len(argv) == 2:
        text, _, proto = argv[1].partition("/")
        try:
            wanted = int(text)
        except ValueError:
            raise UsageError("%r is not a port number" % argv[1], hint="write 80 or 80/tcp")
        ports = [p for p in ports if p["containerPort"] == wanted and p["protocol"] == (proto or "tcp")]
        if not ports:
            from capsa.errors import NetworkError
            raise NetworkError("no public port %s published for %s" % (argv[1], argv[0]))
        for p in ports:
            ctx.stdout.write("%s:%d\n" % (p["hostIP"] or "0.0.0.0", p["hostPort"]))
        return 0
    for p in ports:
        ctx.stdout.write(format_mapping(p) + "\n")
    return 0
