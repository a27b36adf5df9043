"""capsa-runtime's command line: runc's global flags and subcommands, parsed from one table.

Owns the flag tables, the parser, the run context and the one place CapsaError is caught.
Must not import anything heavy at module level: each command's module is imported only when
that command runs (start-up time is the product).
"""
import os
import sys

from capsa.errors import CapsaError, UsageError

VERSION = "0.1.0"
SPEC_VERSION = "1.2.0"
DEFAULT_ROOT = "/run/capsa"

# A flag: (names, kind, dest). kind: "bool", "str", "int", "list" (repeatable), "duration".
GLOBAL_FLAGS = (
    (("--root",), "str", "root"),
    (("--log",), "str", "log"),
    (("--log-format",), "str", "log_format"),
    (("--debug",), "bool", "debug"),
    (("--systemd-cgroup",), "bool", "systemd_cgroup"),
    (("--rootless",), "str", "rootless"),
    (("--criu",), "str", "criu"),
    (("--version", "-v"), "bool", "version"),
    (("--help", "-h"), "bool", "help"),
)

_PRESERVE = (("--preserve-fds",), "int", "preserve_fds")
_CONSOLE = (("--console-socket",), "str", "console_socket")
_PIDFILE = (("--pid-file",), "str", "pid_file")
_PIDFD = (("--pidfd-socket",), "str", "pidfd_socket")
_CREATE_FLAGS = (
    (("--bundle", "-b"), "str", "bundle"),
    _CONSOLE, _PIDFILE, _PIDFD,
    (("--no-pivot",), "bool", "no_pivot"),
    (("--no-new-keyring",), "bool", "no_new_keyring"),
    _PRESERVE,
)
_UPDATE_FLAGS = tuple(((("--" + name,), "str", name.replace("-", "_")) for name in (
    "blkio-weight", "cpu-period", "cpu-quota", "cpu-burst", "cpu-share", "cpu-rt-period",
    "cpu-rt-runtime", "cpuset-cpus", "cpuset-mems", "kernel-memory", "kernel-memory-tcp", "memory",
    "cpu-idle", "memory-reservation", "memory-swap", "pids-limit", "l3-cache-schema",
    "mem-bw-schema"))) + ((("--resources", "-r"), "str", "resources"),)

# name: (module under capsa.runtime.commands, usage of positionals, summary, flags)
COMMANDS = {
    "create": ("create", "<container-id>", "create a container", _CREATE_FLAGS),
    "start": ("start", "<container-id>", "start a created container", ()),
    "run": ("run", "<container-id>", "create and start a container", _CREATE_FLAGS + (
        (("--detach", "-d"), "bool", "detach"),
        (("--keep",), "bool", "keep"),
        (("--no-subreaper",), "bool", "no_subreaper"),
    )),
    "state": ("state", "<container-id>", "output the state of a container", ()),
    "kill": ("kill", "<container-id> [signal]", "send a signal to the container's init process", (
        (("--all", "-a"), "bool", "all"),
    )),
    "delete": ("delete", "<container-id>", "delete a container and what it holds", (
        (("--force", "-f"), "bool", "force"),
    )),
    "list": ("list", "", "list containers started under the root", (
        (("--format", "-f"), "str", "format"),
        (("--quiet", "-q"), "bool", "quiet"),
    )),
    "ps": ("ps", "<container-id> [ps options]", "list processes running inside a container", (
        (("--format", "-f"), "str", "format"),
    )),
    "exec": ("exec", "<container-id> <command> [args...]", "run a new process inside a container", (
        _CONSOLE, _PIDFD, _PIDFILE, _PRESERVE,
        (("--cwd",), "str", "cwd"),
        (("--env", "-e"), "list", "env"),
        (("--tty", "-t"), "bool", "tty"),
        (("--user", "-u"), "str", "user"),
        (("--additional-gids", "-g"), "list", "additional_gids"),
        (("--process", "-p"), "str", "process"),
        (("--detach", "-d"), "bool", "detach"),
        (("--process-label",), "str", "process_label"),
        (("--apparmor",), "str", "apparmor"),
        (("--no-new-privs",), "bool", "no_new_privs"),
        (("--cap", "-c"), "list", "cap"),
        (("--cgroup",), "list", "cgroup"),
        (("--ignore-paused",), "bool", "ignore_paused"),
    )),
    "pause": ("pause", "<container-id>", "suspend all processes of a container", ()),
    "resume": ("resume", "<container-id>", "resume all processes of a paused container", ()),
    "update": ("update", "<container-id>", "change a running container's resource limits",
               _UPDATE_FLAGS),
    "events": ("events", "<container-id>", "show container events and resource statistics", (
        (("--interval",), "duration", "interval"),
        (("--stats",), "bool", "stats"),
    )),
    "spec": ("spec", "", "write a new config.json into the bundle", (
        (("--bundle", "-b"), "str", "bundle"),
        (("--rootless",), "bool", "rootless"),
        (("--hardened",), "bool", "hardened"),
    )),
    "features": ("features", "", "show what this runtime supports, as JSON", ()),
}

# How many positionals each command takes: (min, max); None = no maximum.
_ARITY = {"create": (1, 1), "start": (1, 1), "run": (1, 1), "state": (1, 1), "kill": (1, 2),
          "delete": (1, 1), "list": (0, 0), "ps": (1, None), "exec": (1, None), "pause": (1, 1),
          "resume": (1, 1), "update": (1, 1), "events": (1, 1), "spec": (0, 0), "features": (0, 0)}


def read_default_root():
    """/run/capsa, or $XDG_RUNTIME_DIR/capsa for a rootless caller (runc's rule, which rootless
    podman counts on: it passes no --root): an unprivileged one, or root of a user namespace
    whose $USER is unset or not root."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        if os.geteuid() != 0:
            return os.path.join(runtime_dir, "capsa")
        if os.environ.get("USER") != "root":
            from capsa.userns import read_in_userns
            if read_in_userns():
                return os.path.join(runtime_dir, "capsa")
    return DEFAULT_ROOT


class Context:
    """What every command gets: the global flags and the log sink."""

    __slots__ = ("root", "log_path", "log_format", "debug", "systemd_cgroup", "rootless",
                 "stdout", "stderr", "command")

    def __init__(self, opts, command=None):
        self.root = opts.get("root") or read_default_root()
        self.log_path = opts.get("log")
        self.log_format = opts.get("log_format") or "text"
        self.debug = bool(opts.get("debug"))
        self.systemd_cgroup = bool(opts.get("systemd_cgroup"))
        self.rootless = opts.get("rootless") or "auto"
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self.command = command

    def log(self, level, message):
        """Append one line to --log (runc's text or JSON line format), or stderr without --log."""
        if level == "debug" and not self.debug:
            return
        if self.log_format == "json":
            from capsa.jsonlite import dumps
            line = dumps({"level": level, "msg": message, "time": _now()})
        else:
            line = 'time="%s" level=%s msg="%s"' % (_now(), level,
                                                     message.replace("\\", "\\\\").replace('"', '\\"'))
        if self.log_path:
            try:
                fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o644)
                try:
                    os.write(fd, (line + "\n").encode())
                finally:
                    os.close(fd)
                return
            except OSError:
                pass
        if level != "error":
            self.stderr.write(line + "\n")


def _now():
    import time
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%06dZ" % int(now % 1 * 1e6)


def parse_flags(table, argv, stop_at_positional):
    """Parse Go-style flags (--x v, --x=v, -x v, -x=v) per `table`; return (opts, positionals).

    With stop_at_positional, everything from the first positional on is positional (runc
    `exec <id> <cmd> -flags` and global flags before the subcommand).
    """
    by_name = {}
    for names, kind, dest in table:
        for name in names:
            by_name[name] = (kind, dest)
            if name.startswith("--"):
                by_name[name[1:]] = (kind, dest)
    opts = {}
    positionals = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positionals.extend(argv[i:])
            break
        if len(arg) < 2 or arg[0] != "-" or (arg[1:].isdigit() and positionals):
            positionals.append(arg)
            if stop_at_positional:
                positionals.extend(argv[i:])
                break
            continue
        name, eq, value = arg.partition("=")
        spec = by_name.get(name)
        if spec is None:
            raise UsageError("flag provided but not defined: " + name, hint="see --help")
        kind, dest = spec
        if kind == "bool":
            if eq:
                if value not in ("true", "false", "1", "0"):
                    raise UsageError("invalid boolean value %r for %s" % (value, name))
                opts[dest] = value in ("true", "1")
            else:
                opts[dest] = True
            continue
        if not eq:
            if i >= len(argv):
                raise UsageError("flag needs an argument: " + name)
            value = argv[i]
            i += 1
        if kind == "int":
            try:
                value = int(value)
            except ValueError:
                raise UsageError("invalid value %r for %s: want a whole number" % (value, name))
        elif kind == "duration":
            value = parse_duration(value, name)
        if kind == "list":
            opts.setdefault(dest, []).append(value)
        else:
            opts[dest] = value
    return opts, positionals


def parse_duration(text, name="duration"):
    """Go duration strings as runc takes them (5s, 100ms, 1m30s); returns seconds as float."""
    units = (("ms", 0.001), ("us", 1e-6), ("µs", 1e-6), ("ns", 1e-9), ("h", 3600.0),
             ("m", 60.0), ("s", 1.0))
    rest = text.strip()
    total = 0.0
    if not rest:
        raise UsageError("invalid duration %r for %s" % (text, name))
    while rest:
        number = ""
        while rest and (rest[0].isdigit() or rest[0] == "."):
            number, rest = number + rest[0], rest[1:]
        for unit, scale in units:
            if rest.startswith(unit) and number:
                total += float(number) * scale
                rest = rest[len(unit):]
                break
        else:
            raise UsageError("invalid duration %r for %s: use e.g. 5s or 100ms" % (text, name))
    return total


def build_usage(command=None):
    if command is None:
        lines = ["usage: capsa-runtime [global options] <command> [options] [arguments]", "",
                 "commands:"]
        for name in COMMANDS:
            lines.append("  %-10s %s" % (name, COMMANDS[name][2]))
        lines += ["", "global options:"]
        for names, kind, _ in GLOBAL_FLAGS:
            lines.append("  " + ", ".join(names) + ("" if kind == "bool" else " value"))
        return "\n".join(lines) + "\n"
    module, positional, summary, flags = COMMANDS[command]
    lines = ["usage: capsa-runtime %s [options] %s" % (command, positional), "", summary, ""]
    for names, kind, _ in flags:
        lines.append("  " + ", ".join(names) + ("" if kind == "bool" else " value"))
    return "\n".join(lines) + "\n"


def build_version():
    lines = ["capsa-runtime version " + VERSION, "spec: " + SPEC_VERSION,
             "python: %d.%d.%d" % sys.version_info[:3]]
    try:
        from capsa.syscalls.seccomp import read_libseccomp_version
        version = read_libseccomp_version()
    except (ImportError, OSError, AttributeError):
        version = None
    if version:
        lines.append("libseccomp: " + version)
    return "\n".join(lines) + "\n"


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    ctx = None
    try:
        opts, rest = parse_flags(GLOBAL_FLAGS, argv, True)
        ctx = Context(opts)
        if ctx.log_format not in ("text", "json"):
            raise UsageError("invalid --log-format %r: use text or json" % ctx.log_format)
        if ctx.rootless not in ("true", "false", "auto"):
            raise UsageError("invalid --rootless %r: use true, false or auto" % ctx.rootless)
        if opts.get("version"):
            sys.stdout.write(build_version())
            return 0
        if not rest or opts.get("help"):
            sys.stdout.write(build_usage())
            return 0 if opts.get("help") else 2
        name = rest[0]
        if name not in COMMANDS:
            raise UsageError("no such command %r" % name, hint="see capsa-runtime --help")
        ctx.command = name
        module_name, _, _, flags = COMMANDS[name]
        # exec and ps pass everything after the container id on (a command; ps options)
        cmd_opts, args = parse_flags(flags + ((("--help", "-h"), "bool", "help"),), rest[1:],
                                     name in ("exec", "ps"))
        if name == "ps" and args[1:2] == ["--"]:
            del args[1]  # `ps <id> -- -o pid` and `ps <id> -o pid` mean the same
        if cmd_opts.get("help"):
            sys.stdout.write(build_usage(name))
            return 0
        low, high = _ARITY[name]
        if len(args) < low:
            raise UsageError("%s: missing %s" % (name, COMMANDS[name][1].split(" ")[0]),
                             hint="usage: capsa-runtime %s [options] %s" % (name, COMMANDS[name][1]))
        if high is not None and len(args) > high:
            raise UsageError("%s: unexpected argument %r" % (name, args[high]))
        try:
            module = __import__("capsa.runtime.commands." + module_name, fromlist=["run"])
        except ModuleNotFoundError as exc:
            if exc.name != "capsa.runtime.commands." + module_name:
                raise
            raise UsageError("command %r is not available in this build" % name)
        status = module.run(ctx, cmd_opts, args)
        sys.stdout.flush()
        return status or 0
    except CapsaError as err:
        return _report(ctx, err.line(), err.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


def _report(ctx, line, code):
    if ctx is not None:
        ctx.log("error", line)
    sys.stderr.write("capsa-runtime: " + line + "\n")
    return code


def entry():
    """The launcher's entry point: run, flush, and leave without interpreter finalization
    (tearing down ~70 modules costs ~3 ms; every file capsa writes is closed by then)."""
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(status)
