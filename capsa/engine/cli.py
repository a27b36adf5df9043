"""The `capsa` command: global flags, the lazy command table, and the one place errors are caught.

A command is (module, function); only the invoked command's module is imported, so a missing
or broken module fails that command alone. Imports only os/sys and capsa.errors at load time.
"""
import os
import sys

from capsa.errors import CapsaError

COMMANDS = {
    "run": ("capsa.engine.lifecycle", "cmd_run", "Create and run a container from an image"),
    "create": ("capsa.engine.lifecycle", "cmd_create", "Create a container without starting it"),
    "start": ("capsa.engine.lifecycle", "cmd_start",
              "Start containers; or a declared container: start [-d|-s|-se] NAME"),
    "stop": ("capsa.engine.lifecycle", "cmd_stop", "Stop running containers"),
    "restart": ("capsa.engine.lifecycle", "cmd_restart", "Restart containers"),
    "kill": ("capsa.engine.lifecycle", "cmd_kill", "Send a signal (default KILL) to containers"),
    "rm": ("capsa.engine.lifecycle", "cmd_rm", "Remove containers"),
    "ps": ("capsa.engine.lifecycle", "cmd_ps", "List containers"),
    "logs": ("capsa.engine.lifecycle", "cmd_logs", "Show a container's output"),
    "exec": ("capsa.engine.lifecycle", "cmd_exec", "Run a command in a running container"),
    "inspect": ("capsa.engine.lifecycle", "cmd_inspect", "Show a container's details as JSON"),
    "stats": ("capsa.engine.lifecycle", "cmd_stats", "Show resource usage"),
    "top": ("capsa.engine.lifecycle", "cmd_top", "Show a container's processes"),
    "wait": ("capsa.engine.lifecycle", "cmd_wait", "Wait for containers to exit; print codes"),
    "cp": ("capsa.engine.lifecycle", "cmd_cp", "Copy files between a container and the host"),
    "pause": ("capsa.engine.lifecycle", "cmd_pause", "Freeze a container's processes"),
    "unpause": ("capsa.engine.lifecycle", "cmd_unpause", "Thaw a paused container"),
    "container-cleanup": ("capsa.engine.conmon", "cmd_container_cleanup",
                          "(internal) conmon's exit command"),
    "volume": ("capsa.engine.volumes", "cmd_volume", "Manage volumes: create|ls|inspect|rm|prune"),
    "start-all": ("capsa.engine.declared", "cmd_start_all",
                  "Start every declared container and supervise them"),
    "list": ("capsa.engine.declared", "cmd_list", "List declared containers [-r: running only]"),
    "port": ("capsa.engine.network.commands", "cmd_port", "List a container's port mappings"),
    "network": ("capsa.engine.network.commands", "cmd_network", "Manage networks"),
    "pull": ("capsa.engine.images.commands", "cmd_pull", "Pull an image from a registry"),
    "push": ("capsa.engine.images.commands", "cmd_push", "Push an image to a registry"),
    "images": ("capsa.engine.images.commands", "cmd_images", "List images"),
    "rmi": ("capsa.engine.images.commands", "cmd_rmi", "Remove images"),
    "import": ("capsa.engine.images.commands", "cmd_import_", "Import a rootfs tarball as image"),
    "load": ("capsa.engine.images.commands", "cmd_load", "Load images from an archive"),
    "save": ("capsa.engine.images.commands", "cmd_save", "Save images to an archive"),
    "tag": ("capsa.engine.images.commands", "cmd_tag", "Give an image another name"),
}
# `capsa image X` / `capsa container X` spellings
GROUPS = {
    "image": {"ls": "images", "list": "images", "pull": "pull", "push": "push", "rm": "rmi",
              "inspect": ("capsa.engine.images.commands", "cmd_image_inspect"),
              "prune": ("capsa.engine.images.commands", "cmd_image_prune"),
              "import": "import", "load": "load", "save": "save", "tag": "tag"},
    "container": {"ls": "ps", "list": "ps", "run": "run", "create": "create", "start": "start",
                  "stop": "stop", "restart": "restart", "kill": "kill", "rm": "rm", "logs": "logs",
                  "exec": "exec", "inspect": "inspect", "stats": "stats", "top": "top",
                  "wait": "wait", "cp": "cp", "port": "port", "pause": "pause",
                  "unpause": "unpause"},
}


class Context:
    """What every command receives (see the command contract in docs/engine.md)."""

    __slots__ = ("store_root", "stdout", "stderr", "isatty", "runtime", "home", "rootless")

    def __init__(self, store_root="/var/lib/capsa", stdout=None, stderr=None, runtime=None,
                 home=None, rootless=False):
        self.store_root = store_root
        self.rootless = rootless
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        try:
            self.isatty = self.stdout.isatty()
        except (AttributeError, ValueError):
            self.isatty = False
        self.runtime = runtime
        self.home = home


def build_usage():
    lines = ["Usage: capsa [--root DIR] [--runtime NAME|PATH] [--home DIR] COMMAND [ARGS...]", "",
             "Commands:"]
    for name in sorted(COMMANDS):
        lines.append("  %-10s %s" % (name, COMMANDS[name][2]))
    lines.append("  %-10s %s" % ("image",
                                 "image ls|pull|push|rm|inspect|prune|import|load|save|tag"))
    lines.append("  %-10s %s" % ("container", "container ls|run|... (the commands above)"))
    return "\n".join(lines) + "\n"


def read_global_flags(argv):
    """Flags before the command -> (settings dict, rest of argv)."""
    settings = {"root": os.environ.get("CAPSA_ROOT") or None,
                "runtime": os.environ.get("CAPSA_RUNTIME"),
                "home": os.environ.get("CAPSA_HOME")}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("--root", "--runtime", "--home"):
            if not eq:
                if i + 1 >= len(argv):
                    from capsa.errors import UsageError
                    raise UsageError("flag " + name + " needs a value", field="capsa")
                value = argv[i + 1]
                i += 1
            settings[name[2:]] = value
        elif name in ("-h", "--help"):
            settings["help"] = True
        elif name in ("-v", "--version"):
            settings["version"] = True
        else:
            from capsa.errors import UsageError
            raise UsageError("unknown global flag " + name, field="capsa",
                             hint="global flags are --root, --runtime, --home")
        i += 1
    return settings, argv[i:]


def build_command(argv):
    """argv after global flags -> (module, function, command name, rest)."""
    from capsa.errors import UsageError
    name = argv[0]
    rest = argv[1:]
    if name in GROUPS:
        if not rest or rest[0] in ("-h", "--help"):
            raise UsageError("capsa " + name + " needs a subcommand: "
                             + ", ".join(sorted(GROUPS[name])), field=name)
        target = GROUPS[name].get(rest[0])
        if target is None:
            raise UsageError("unknown command capsa " + name + " " + rest[0], field=name,
                             hint="one of " + ", ".join(sorted(GROUPS[name])))
        rest = rest[1:]
        if isinstance(target, tuple):
            return target[0], target[1], name, rest
        name = target
    if name not in COMMANDS:
        raise UsageError("unknown command " + repr(name), field="capsa",
                         hint="see `capsa --help`")
    module, function, _ = COMMANDS[name]
    return module, function, name, rest


def main(argv=None, ctx=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    err = ctx.stderr if ctx else sys.stderr
    try:
        settings, rest = read_global_flags(argv)
        rootless = False
        if ctx is None:
            from capsa.engine.rootless import read_default_store, read_rootless
            rootless = read_rootless()
            root = settings["root"] or (read_default_store(os.environ) if rootless
                                        else "/var/lib/capsa")
            home = settings["home"]
            if rootless and not home:
                # declared containers' folder: /containers is root's, ~/containers the user's
                home = os.path.join(os.environ.get("HOME") or os.path.expanduser("~"),
                                    "containers")
            ctx = Context(root, runtime=settings["runtime"], home=home, rootless=rootless)
        if settings.get("version"):
            ctx.stdout.write("capsa 0.1.0\n")
            return 0
        if settings.get("help") or not rest:
            ctx.stdout.write(build_usage())
            return 0 if settings.get("help") else 2
        module_name, function, name, rest = build_command(rest)
        if rest[:1] in (["-h"], ["--help"]) and name in COMMANDS and \
                module_name in ("capsa.engine.lifecycle", "capsa.engine.declared") and \
                name not in ("run", "create", "start"):
            ctx.stdout.write("Usage: capsa %s ...\n\n%s\n" % (name, COMMANDS[name][2]))
            return 0
        try:
            # __import__ + sys.modules, not importlib: importlib's import costs ~0.5 ms a run
            __import__(module_name)
            fn = getattr(sys.modules[module_name], function)
        except (ImportError, AttributeError):
            ctx.stderr.write("capsa: " + name + ": this command is not available in this build ("
                             + module_name + "." + function + " is missing)\n")
            return 125
        if rootless:
            # an unprivileged user's engine works as root of a user namespace of its own
            from capsa.engine.rootless import apply_enter_namespace
            apply_enter_namespace(ctx.store_root)
        code = fn(ctx, rest)
        return 0 if code is None else code
    except CapsaError as e:
        err.write("capsa: " + e.line() + "\n")
        from capsa.errors import UsageError
        if isinstance(e, UsageError):
            return 125
        return e.exit_code if e.exit_code in (125, 126, 127) else 1
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        # a host failure outside the error hierarchy still gets one line, never a traceback
        err.write("capsa: " + (e.strerror or str(e)) + (": " + e.filename if e.filename else "")
                  + "\n")
        return 125
    except BrokenPipeError:
        return 141


def entry():
    code = main()
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass
    sys.exit(code)


if __name__ == "__main__":
    entry()
