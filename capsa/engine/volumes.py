"""Named and anonymous volumes: STORE/volumes/NAME/{_data,volume.json}, and `capsa volume`.

Owns creation (O_EXCL-safe), Docker's copy-up of image content into a new volume, use tracking
through the container records, removal and prune. Imports os/json/shutil and the engine's store.
"""
import os
import time

from capsa.errors import StateError, UsageError
from capsa.engine.store import ContainerStore, format_time, read_json, write_json_atomic


def check_volume_name(name):
    if not name or not name[0].isalnum() or not all(c.isalnum() or c in "_.-" for c in name):
        raise UsageError("invalid volume name " + repr(name), field="volume",
                         hint="use letters, digits, _ . - and start with a letter or digit")


class VolumeStore:
    __slots__ = ("root", "dir")

    def __init__(self, store_root):
        self.root = store_root
        self.dir = os.path.join(store_root, "volumes")

    def data_path(self, name):
        return os.path.join(self.dir, name, "_data")

    def ensure(self, name=None, labels=None):
        """-> (name, created_now). A missing name makes an anonymous volume."""
        anonymous = name is None
        if anonymous:
            name = os.urandom(32).hex()
        check_volume_name(name)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        folder = os.path.join(self.dir, name)
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            if os.path.isdir(self.data_path(name)):
                return name, False
        os.makedirs(self.data_path(name), mode=0o755, exist_ok=True)
        write_json_atomic(os.path.join(folder, "volume.json"),
                          {"Name": name, "Driver": "local", "Mountpoint": self.data_path(name),
                           "CreatedAt": format_time(time.time()), "Labels": labels or {},
                           "Anonymous": anonymous, "Scope": "local"})
        return name, True

    def inspect(self, name):
        info = read_json(os.path.join(self.dir, name, "volume.json"))
        if info is None:
            raise StateError("no such volume: " + name, field="volume",
                             hint="see `capsa volume ls`")
        return info

    def names(self):
        try:
            return sorted(n for n in os.listdir(self.dir)
                          if os.path.isfile(os.path.join(self.dir, n, "volume.json")))
        except FileNotFoundError:
            return []

    def users(self, name):
        out = []
        for record in ContainerStore(self.root).records():
            if name in record.get("anon_volumes", []) or any(
                    m.get("source") == name for m in record.get("volume_mounts", [])):
                out.append(record["id"])
        return out

    def remove(self, name, force=False):
        import shutil
        folder = os.path.join(self.dir, name)
        if not os.path.isdir(folder):
            if force:
                return
            raise StateError("no such volume: " + name, field="volume")
        if not force:
            users = self.users(name)
            if users:
                raise StateError("volume " + name + " is in use by container " + users[0][:12],
                                 field="volume", hint="remove the container first")
        shutil.rmtree(folder, ignore_errors=True)

    def prune(self):
        removed = []
        for name in self.names():
            if not self.users(name):
                self.remove(name, force=True)
                removed.append(name)
        return removed

    def apply_copy_up(self, rootfs, target, dest):
        """Docker fills a new volume with the image's content at the mount point; only a real
        folder path inside the rootfs (no symlink on the way) is copied, symlinks kept as links."""
        import shutil
        import stat
        cur = rootfs
        for part in [p for p in target.split("/") if p]:
            if part == "..":
                return
            cur = os.path.join(cur, part)
            try:
                st = os.lstat(cur)
            except OSError:
                return
            if not stat.S_ISDIR(st.st_mode):
                return
        for name in os.listdir(cur):
            src = os.path.join(cur, name)
            dst = os.path.join(dest, name)
            if os.path.isdir(src) and not os.path.islink(src):
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst, follow_symlinks=False)
        st = os.lstat(cur)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        os.chown(dest, st.st_uid, st.st_gid)


def cmd_volume(ctx, argv):
    from capsa.engine.options import parse_options
    from capsa.engine.output import write_table, write_json_out
    if not argv or argv[0] in ("-h", "--help"):
        ctx.stdout.write("Usage: capsa volume create|ls|inspect|rm|prune\n")
        return 0
    sub, rest = argv[0], argv[1:]
    vols = VolumeStore(ctx.store_root)
    if sub == "create":
        opts, pos = parse_options(rest, [("--label -l", "label", "list"),
                                         ("--driver -d", "driver", "str")], "volume create",
                                  max_positionals=1)
        if opts.get("driver") not in (None, "local"):
            raise UsageError("only the local volume driver exists", field="--driver")
        labels = dict(x.partition("=")[::2] for x in opts["label"])
        name, _ = vols.ensure(pos[0] if pos else None, labels)
        ctx.stdout.write(name + "\n")
        return 0
    if sub in ("ls", "list"):
        opts, _ = parse_options(rest, [("-q --quiet", "quiet", "bool"),
                                       ("--format", "format", "str")], "volume ls",
                                max_positionals=0)
        infos = [vols.inspect(n) for n in vols.names()]
        if opts["quiet"]:
            for info in infos:
                ctx.stdout.write(info["Name"] + "\n")
        elif opts["format"] == "json":
            write_json_out(ctx, infos)
        else:
            write_table(ctx, ["DRIVER", "VOLUME NAME"], [[i["Driver"], i["Name"]] for i in infos])
        return 0
    if sub == "inspect":
        _, pos = parse_options(rest, [("--format -f", "format", "str")], "volume inspect",
                               interspersed=True)
        if not pos:
            raise UsageError("volume inspect needs a volume name", field="volume inspect")
        write_json_out(ctx, [vols.inspect(n) for n in pos])
        return 0
    if sub in ("rm", "remove"):
        opts, pos = parse_options(rest, [("-f --force", "force", "bool")], "volume rm",
                                  interspersed=True)
        if not pos:
            raise UsageError("volume rm needs a volume name", field="volume rm")
        for name in pos:
            vols.remove(name, force=opts["force"])
            ctx.stdout.write(name + "\n")
        return 0
    if sub == "prune":
        parse_options(rest, [("-f --force", "force", "bool"), ("-a --all", "all", "bool")],
                      "volume prune", max_positionals=0)
        for name in vols.prune():
            ctx.stdout.write(name + "\n")
        return 0
    raise UsageError("unknown volume command " + repr(sub), field="volume",
                     hint="use create, ls, inspect, rm or prune")
