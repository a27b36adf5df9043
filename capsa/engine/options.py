"""Docker-style command-line option parsing for every `capsa` command, driven by small tables.

Pure: no I/O, imports only capsa.errors. A table row is (names, key, kind) with kind one of
"bool", "str", "list" (repeatable), "int"; `-it`, `-m64m`, `--name=x` and `--` are understood.
"""
from capsa.errors import UsageError


def build_option_index(table):
    index = {}
    for names, key, kind in table:
        for name in names.split():
            index[name] = (key, kind)
    return index


def parse_options(argv, table, command, interspersed=False, max_positionals=None):
    """Return (options dict, positionals). Without `interspersed`, the first positional ends the
    options (docker run IMAGE CMD...: flags after the image belong to the command)."""
    index = build_option_index(table)
    opts = {}
    for names, key, kind in table:
        if kind == "list":
            opts[key] = []
        elif kind == "bool":
            opts[key] = False
        else:
            opts.setdefault(key, None)
    positionals = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positionals.extend(argv[i:])
            break
        if not arg.startswith("-") or arg == "-":
            positionals.append(arg)
            if not interspersed:
                positionals.extend(argv[i:])
                break
            continue
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name not in index:
                raise UsageError("unknown flag " + name, field=command,
                                 hint="see `capsa " + command + " --help`")
            key, kind = index[name]
            if kind == "bool":
                if eq:
                    value = value.lower()
                    if value not in ("true", "false", "1", "0"):
                        raise UsageError("flag " + name + " takes true or false, not "
                                         + repr(value), field=command)
                    opts[key] = value in ("true", "1")
                else:
                    opts[key] = True
                continue
            if not eq:
                if i >= len(argv):
                    raise UsageError("flag " + name + " needs a value", field=command)
                value = argv[i]
                i += 1
            _store(opts, key, kind, value, name, command)
            continue
        # a cluster of short flags: -it, -dit, -m64m, -e X
        j = 1
        while j < len(arg):
            name = "-" + arg[j]
            if name not in index:
                raise UsageError("unknown shorthand flag " + repr(arg[j]) + " in " + arg,
                                 field=command, hint="see `capsa " + command + " --help`")
            key, kind = index[name]
            j += 1
            if kind == "bool":
                opts[key] = True
                continue
            value = arg[j:]
            if value.startswith("="):
                value = value[1:]
            if not value:
                if i >= len(argv):
                    raise UsageError("flag " + name + " needs a value", field=command)
                value = argv[i]
                i += 1
            _store(opts, key, kind, value, name, command)
            break
    if max_positionals is not None and len(positionals) > max_positionals:
        raise UsageError("too many arguments: " + " ".join(positionals[max_positionals:]),
                         field=command, hint="see `capsa " + command + " --help`")
    return opts, positionals


def _store(opts, key, kind, value, name, command):
    if kind == "list":
        opts[key].append(value)
    elif kind == "int":
        try:
            opts[key] = int(value)
        except ValueError:
            raise UsageError("flag " + name + " takes a whole number, not " + repr(value),
                             field=command) from None
    else:
        opts[key] = value


def build_help(command, usage, table):
    lines = ["Usage: capsa " + command + " " + usage, "", "Options:"]
    for names, key, kind in table:
        shown = ", ".join(names.split())
        if kind != "bool":
            shown += " " + ("value" if kind != "int" else "int")
        lines.append("  " + shown + (" (repeatable)" if kind == "list" else ""))
    return "\n".join(lines) + "\n"
