"""The image commands of the `capsa` CLI: pull, push, images, image inspect, rmi, import, load,
save, tag, image prune. Each is `cmd_X(ctx, argv) -> int` with its own small flag parser (no
argparse: 13 ms); ctx gives store_root, stdout, stderr, isatty. Errors are raised as
CapsaError subclasses for the CLI to print once.
"""
from capsa.errors import UsageError

_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def build_flags(argv, spec, command):
    """Parse argv against spec {flag: "flag"|"value"|"bool"|"multi"} (aliases: "-q": "--quiet"
    given as spec["-q"] = ("alias", "--quiet")). Returns (options, positionals)."""
    opts, args, i = {}, [], 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            args.extend(argv[i:])
            break
        if not word.startswith("-") or word == "-":
            args.append(word)
            continue
        name, eq, value = word.partition("=")
        kind = spec.get(name)
        if isinstance(kind, tuple):
            name = kind[1]
            kind = spec[name]
        if kind is None:
            raise UsageError("unknown flag %s" % name, field=command,
                             hint="see `capsa %s --help`" % command)
        if kind == "flag":
            if eq:
                raise UsageError("%s takes no value" % name, field=command)
            opts[name] = True
        elif kind == "bool":
            if eq:
                if value.lower() not in _BOOL_WORDS:
                    raise UsageError("%s=%s: expected true or false" % (name, value), field=command)
                opts[name] = _BOOL_WORDS[value.lower()]
            else:
                opts[name] = True
        else:
            if not eq:
                if i >= len(argv):
                    raise UsageError("%s needs a value" % name, field=command)
                value = argv[i]
                i += 1
            if kind == "multi":
                opts.setdefault(name, []).append(value)
            else:
                opts[name] = value
    return opts, args


def _out(ctx, text):
    ctx.stdout.write(text + "\n")


def _json(ctx, data):
    import json
    _out(ctx, json.dumps(data, indent=2, sort_keys=True))


def _isatty(ctx):
    value = getattr(ctx, "isatty", False)
    return value() if callable(value) else bool(value)


def _store(ctx, opts=None):
    from capsa.engine.images.store import ImageStore
    opts = opts or {}
    return ImageStore(ctx.store_root, registries_conf=opts.get("--registries-conf"),
                      auth_file=opts.get("--authfile"), platform=opts.get("--platform"))


def _want_json(opts, command):
    fmt = opts.get("--format")
    if fmt not in (None, "json", "table"):
        raise UsageError("--format %s is not supported" % fmt, field=command,
                         hint="use --format json")
    return fmt == "json"


def _help(ctx, argv, text):
    if "-h" in argv or "--help" in argv:
        _out(ctx, text)
        return True
    return False


class _Progress:
    """Per-blob progress lines on a terminal (stderr); silent otherwise."""

    def __init__(self, stream):
        import threading
        self.stream = stream
        self.lock = threading.Lock()
        self.state = {}

    def __call__(self, digest, done, total):
        with self.lock:
            self.state[digest] = (done, total)
            parts = []
            for d, (n, t) in self.state.items():
                pct = " %3d%%" % (100 * n // t) if t else ""
                parts.append("%s %s%s" % (d.partition(":")[2][:12], _size(n), pct))
            self.stream.write("\r\x1b[K" + "  ".join(parts[-4:]))
            self.stream.flush()

    def finish(self):
        if self.state:
            self.stream.write("\n")


def _size(n):
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1000.0


def _tls(opts):
    return opts.get("--tls-verify", True)


_REGISTRY_FLAGS = {"--tls-verify": "bool", "--authfile": "value", "--registries-conf": "value",
                   "--format": "value", "--quiet": "flag", "-q": ("alias", "--quiet")}


def cmd_pull(ctx, argv):
    if _help(ctx, argv, "usage: capsa pull [--tls-verify=false] [--platform OS/ARCH] "
                        "[--authfile FILE] [-q] [--format json] IMAGE"):
        return 0
    opts, args = build_flags(argv, dict(_REGISTRY_FLAGS, **{"--platform": "value"}), "pull")
    if len(args) != 1:
        raise UsageError("pull takes one image reference", field="pull", hint="capsa pull IMAGE")
    as_json = _want_json(opts, "pull")
    progress = _Progress(ctx.stderr) if _isatty(ctx) and not opts.get("--quiet") and not as_json \
        else None
    store = _store(ctx, opts)
    try:
        image_id = store.pull(args[0], tls_verify=_tls(opts), progress=progress)
    finally:
        if progress:
            progress.finish()
    if as_json:
        _json(ctx, {"id": image_id, "names": store.names_of(image_id)})
    else:
        _out(ctx, image_id)
    return 0


def cmd_push(ctx, argv):
    if _help(ctx, argv, "usage: capsa push [--tls-verify=false] [--authfile FILE] "
                        "[--format json] IMAGE [DESTINATION]"):
        return 0
    opts, args = build_flags(argv, _REGISTRY_FLAGS, "push")
    if len(args) not in (1, 2):
        raise UsageError("push takes an image and an optional destination", field="push",
                         hint="capsa push IMAGE [REGISTRY/REPO:TAG]")
    store = _store(ctx, opts)
    dest = args[1] if len(args) == 2 else args[0]
    digest = store.push(args[0], dest, tls_verify=_tls(opts))
    if _want_json(opts, "push"):
        _json(ctx, {"destination": dest, "digest": digest})
    elif not opts.get("--quiet"):
        _out(ctx, digest)
    return 0


def cmd_images(ctx, argv):
    if _help(ctx, argv, "usage: capsa images [-q] [--format json]"):
        return 0
    opts, args = build_flags(argv, {"--format": "value", "--quiet": "flag",
                                    "-q": ("alias", "--quiet"), "--all": "flag",
                                    "-a": ("alias", "--all")}, "images")
    images = _store(ctx).list()
    if _want_json(opts, "images"):
        _json(ctx, images)
        return 0
    if opts.get("--quiet"):
        for image in images:
            _out(ctx, image["id"].partition(":")[2][:12])
        return 0
    rows = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    for image in images:
        for name in image["names"] or ["<none>:<none>"]:
            repo, _, tag = name.rpartition(":") if "@" not in name else (name, "", "<none>")
            rows.append((repo, tag, image["id"].partition(":")[2][:12],
                         (image.get("created") or "")[:19], _size(image.get("size") or 0)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        _out(ctx, "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def cmd_image_inspect(ctx, argv):
    if _help(ctx, argv, "usage: capsa image inspect [--format json] IMAGE..."):
        return 0
    opts, args = build_flags(argv, {"--format": "value"}, "image inspect")
    _want_json(opts, "image inspect")
    if not args:
        raise UsageError("image inspect needs an image", field="image inspect",
                         hint="capsa image inspect IMAGE")
    store = _store(ctx)
    _json(ctx, [store.resolve(ref) for ref in args])
    return 0


def cmd_rmi(ctx, argv):
    if _help(ctx, argv, "usage: capsa rmi [-f] [--format json] IMAGE..."):
        return 0
    opts, args = build_flags(argv, {"--format": "value", "--force": "flag",
                                    "-f": ("alias", "--force")}, "rmi")
    if not args:
        raise UsageError("rmi needs an image", field="rmi", hint="capsa rmi IMAGE")
    store = _store(ctx)
    results = [store.remove(ref, force=bool(opts.get("--force"))) for ref in args]
    if _want_json(opts, "rmi"):
        _json(ctx, results)
        return 0
    for result in results:
        for name in result["untagged"]:
            _out(ctx, "Untagged: " + name)
        for image_id in result["deleted"]:
            _out(ctx, "Deleted: " + image_id)
    return 0


def build_changes(values):
    """`--change 'CMD ["/bin/sh"]'`-style Dockerfile instructions into image config keys."""
    import json
    keys = {"CMD": "Cmd", "ENTRYPOINT": "Entrypoint", "ENV": "Env", "WORKDIR": "WorkingDir",
            "USER": "User", "STOPSIGNAL": "StopSignal", "LABEL": "Labels", "EXPOSE": "ExposedPorts",
            "VOLUME": "Volumes"}
    changes = {}
    for text in values:
        word, _, rest = text.strip().partition(" ")
        key = keys.get(word.upper())
        rest = rest.strip()
        if key is None or not rest:
            raise UsageError("bad --change %r" % text, field="--change",
                             hint="use one of: " + ", ".join(sorted(keys)) + " followed by a value")
        if key in ("Cmd", "Entrypoint"):
            if rest.startswith("["):
                try:
                    value = json.loads(rest)
                except ValueError:
                    raise UsageError("bad JSON in --change %r" % text, field="--change") from None
            else:
                value = ["/bin/sh", "-c", rest]
            changes[key] = value
        elif key == "Env":
            name, eq, val = rest.partition("=")
            if not eq:
                name, _, val = rest.partition(" ")
            changes.setdefault("Env", []).append("%s=%s" % (name, val.strip()))
        elif key == "Labels":
            name, _, val = rest.partition("=")
            changes.setdefault("Labels", {})[name] = val.strip('"')
        elif key in ("ExposedPorts", "Volumes"):
            for item in rest.split():
                if key == "ExposedPorts" and "/" not in item:
                    item += "/tcp"
                changes.setdefault(key, {})[item] = {}
        else:
            changes[key] = rest
    if "Env" in changes and not any(e.startswith("PATH=") for e in changes["Env"]):
        from capsa.engine.images.archive import DEFAULT_PATH
        changes["Env"].insert(0, "PATH=" + DEFAULT_PATH)
    return changes


def cmd_import_(ctx, argv):
    if _help(ctx, argv, "usage: capsa import [--change 'CMD [...]'] [--format json] "
                        "ROOTFS.tar[.gz|.xz|.zst]|FOLDER|oci:DIR[:TAG]|oci-archive:FILE|"
                        "docker-archive:FILE|dir:DIR [NAME]"):
        return 0
    opts, args = build_flags(argv, {"--format": "value", "--change": "multi",
                                    "-c": ("alias", "--change"), "--quiet": "flag",
                                    "-q": ("alias", "--quiet")}, "import")
    from capsa.engine.images.reference import TRANSPORTS
    store = _store(ctx)
    if args and args[0].partition(":")[0] in TRANSPORTS and ":" in args[0] \
            and not args[0].startswith("docker:") and len(args) in (1, 2):
        image_id = store.import_transport(args[0], name=args[1] if len(args) == 2 else None)
    elif len(args) == 2:
        image_id = store.import_rootfs(args[0], args[1], build_changes(opts.get("--change", [])))
    else:
        raise UsageError("import takes a rootfs and a name", field="import",
                         hint="capsa import ROOTFS.tar NAME")
    if _want_json(opts, "import"):
        _json(ctx, {"id": image_id, "names": store.names_of(image_id)})
    else:
        _out(ctx, image_id)
    return 0


def cmd_load(ctx, argv):
    if _help(ctx, argv, "usage: capsa load -i ARCHIVE.tar [--format json]"):
        return 0
    opts, args = build_flags(argv, {"--input": "value", "-i": ("alias", "--input"),
                                    "--format": "value", "--quiet": "flag",
                                    "-q": ("alias", "--quiet")}, "load")
    path = opts.get("--input") or (args[0] if len(args) == 1 else None)
    if not path:
        raise UsageError("load needs an archive", field="load", hint="capsa load -i FILE.tar")
    store = _store(ctx)
    image_id = store.load(path)
    if _want_json(opts, "load"):
        _json(ctx, {"id": image_id, "names": store.names_of(image_id)})
    else:
        _out(ctx, "Loaded image: " + (", ".join(store.names_of(image_id)) or image_id))
    return 0


def cmd_save(ctx, argv):
    if _help(ctx, argv, "usage: capsa save -o FILE [--format docker-archive|oci-archive|json] "
                        "IMAGE..."):
        return 0
    opts, args = build_flags(argv, {"--output": "value", "-o": ("alias", "--output"),
                                    "--format": "value"}, "save")
    fmt = opts.get("--format") or "docker-archive"
    as_json = fmt == "json"
    if as_json:
        fmt = "docker-archive"
    if fmt not in ("docker-archive", "oci-archive"):
        raise UsageError("--format %s is not an archive format" % fmt, field="save",
                         hint="use docker-archive or oci-archive")
    if not opts.get("--output") or not args:
        raise UsageError("save needs -o FILE and an image", field="save",
                         hint="capsa save -o FILE.tar IMAGE")
    path = _store(ctx).save(args, opts["--output"], fmt)
    if as_json:
        _json(ctx, {"path": path, "format": fmt, "images": args})
    return 0


def cmd_tag(ctx, argv):
    if _help(ctx, argv, "usage: capsa tag IMAGE NEW_NAME[:TAG]"):
        return 0
    opts, args = build_flags(argv, {"--format": "value"}, "tag")
    if len(args) != 2:
        raise UsageError("tag takes an image and a new name", field="tag",
                         hint="capsa tag IMAGE NAME[:TAG]")
    name = _store(ctx).tag(args[0], args[1])
    if _want_json(opts, "tag"):
        _json(ctx, {"name": name})
    return 0


def cmd_image_prune(ctx, argv):
    if _help(ctx, argv, "usage: capsa image prune [-a] [-f] [--format json]"):
        return 0
    opts, args = build_flags(argv, {"--all": "flag", "-a": ("alias", "--all"), "--force": "flag",
                                    "-f": ("alias", "--force"), "--format": "value"}, "image prune")
    if args:
        raise UsageError("image prune takes no arguments", field="image prune")
    from capsa.engine.images.rootfs import apply_clean_stale
    store = _store(ctx)
    cleaned = apply_clean_stale(ctx.store_root)
    result = store.prune(all_images=bool(opts.get("--all")))
    result["stale_rootfs"] = cleaned
    if _want_json(opts, "image prune"):
        _json(ctx, result)
        return 0
    for image_id in result["deleted"]:
        _out(ctx, "Deleted: " + image_id)
    _out(ctx, "Total reclaimed space: " + _size(result["freed"]))
    return 0
