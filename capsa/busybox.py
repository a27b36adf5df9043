"""The embedded default image: a busybox root filesystem built offline from Debian's busybox-static.

Owns the image's file list (applet links, /etc files, empty top-level folders) and writing it
as a folder or as a tarball, byte-for-byte the same each time. Standard library only; the
runtime path never imports this module (setup, the engine and tests do).
"""
import os

from capsa.errors import ImageError

BUSYBOX = "/bin/busybox"
DEFAULT_ROOTFS = "/var/lib/capsa/default-rootfs"
# One fixed mtime for every entry: the same tree (and the same tar bytes) on every build.
EPOCH = 946684800
USER_UID = 1000

# (path, mode, uid) of the folders every image has; applet folders are added from the list.
_DIRS = (
    ("bin", 0o755, 0), ("dev", 0o755, 0), ("etc", 0o755, 0), ("home", 0o755, 0),
    ("home/user", 0o755, USER_UID), ("proc", 0o555, 0), ("root", 0o700, 0), ("run", 0o755, 0),
    ("sbin", 0o755, 0), ("sys", 0o555, 0), ("tmp", 0o1777, 0), ("usr", 0o755, 0),
    ("usr/bin", 0o755, 0), ("usr/sbin", 0o755, 0), ("var", 0o755, 0), ("var/tmp", 0o1777, 0),
)

_ETC = (
    ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                   "user:x:1000:1000:user:/home/user:/bin/sh\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
    # tty is gid 5: the default spec mounts devpts with gid=5.
    ("etc/group", "root:x:0:\ntty:x:5:\nuser:x:1000:\nnogroup:x:65534:\n"),
    ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
    ("etc/hostname", "capsa\n"),
)


def read_busybox_applets(busybox=BUSYBOX):
    """Ask the binary which applets it has; return their install paths ("bin/sh", ...)."""
    import subprocess
    check_busybox_static(busybox)
    try:
        out = subprocess.run([busybox, "--list-full"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise ImageError("cannot list the applets of %s: %s" % (busybox, err),
                         hint="reinstall busybox-static: apt-get install busybox-static")
    return out.decode("ascii", "replace").split()


def check_busybox_static(busybox=BUSYBOX):
    """Refuse a missing or dynamically linked busybox: the image holds no libc to load it."""
    hint = "install it with: apt-get install busybox-static"
    try:
        with open(busybox, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                raise ImageError("%s is not a 64-bit little-endian ELF binary" % busybox, hint=hint)
            phoff = int.from_bytes(head[32:40], "little")
            phentsize = int.from_bytes(head[54:56], "little")
            phnum = int.from_bytes(head[56:58], "little")
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except FileNotFoundError:
        raise ImageError("busybox binary %s not found" % busybox, hint=hint)
    except OSError as err:
        raise ImageError("cannot read busybox binary %s: %s" % (busybox, err.strerror), hint=hint)
    for i in range(phnum):
        # PT_INTERP (3): the binary needs a dynamic loader that the image does not have.
        if int.from_bytes(table[i * phentsize:i * phentsize + 4], "little") == 3:
            raise ImageError("%s is dynamically linked" % busybox,
                             hint="the image needs busybox-static: apt-get install busybox-static")


def build_busybox_entries(applets):
    """The image as a sorted list of (path, kind, mode, uid, data).

    kind is "dir", "file" (data: bytes, or None for the busybox binary itself) or "link"
    (data: the relative link target). Paths are relative, without "./".
    """
    entries = {}
    for path, mode, uid in _DIRS:
        entries[path] = (path, "dir", mode, uid, None)
    for path, text in _ETC:
        entries[path] = (path, "file", 0o644, 0, text.encode())
    entries["bin/busybox"] = ("bin/busybox", "file", 0o755, 0, None)
    for applet in applets:
        path = applet.strip("/")
        parts = path.split("/")
        if not path or ".." in parts or "." in parts or "" in parts:
            raise ImageError("busybox lists a bad applet path %r" % applet)
        if path == "bin/busybox":
            continue
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in entries:
                entries[folder] = (folder, "dir", 0o755, 0, None)
            elif entries[folder][1] != "dir":
                raise ImageError("busybox applet %r collides with %r" % (applet, folder))
        if path in entries:
            continue
        # relative, so the link resolves the same inside the container and from the host
        target = os.path.relpath("bin/busybox", "/".join(parts[:-1]) or ".")
        entries[path] = (path, "link", 0o777, 0, target)
    return [entries[path] for path in sorted(entries)]


def build_busybox_rootfs(dest, busybox=BUSYBOX, replace=False):
    """Write the image as a folder at `dest` and return `dest`.

    `dest` may be missing or an empty folder; an existing tree is swapped out only with
    replace=True. The tree is built beside `dest` and renamed in, so a failure leaves nothing.
    """
    dest = os.path.abspath(dest)
    entries = build_busybox_entries(read_busybox_applets(busybox))
    if os.path.lexists(dest) and not replace and not _is_empty_dir(dest):
        raise ImageError("%s exists and is not an empty folder" % dest,
                         hint="remove it, or pass replace=True to rebuild it")
    partial = "%s.partial-%d" % (dest, os.getpid())
    old = "%s.old-%d" % (dest, os.getpid())
    try:
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        apply_busybox_tree(entries, partial, busybox)
        if os.path.lexists(dest):
            os.rename(dest, old)
        os.rename(partial, dest)
    except OSError as err:
        _remove_tree(partial)
        if os.path.lexists(old) and not os.path.lexists(dest):
            os.rename(old, dest)
        raise ImageError("cannot write the busybox rootfs %s: %s" % (dest, err.strerror or err))
    except BaseException:
        _remove_tree(partial)
        raise
    _remove_tree(old)
    return dest


def apply_busybox_tree(entries, root, busybox=BUSYBOX):
    """Create `root` (must not exist) and write `entries` under it; own uids only as root."""
    as_root = os.geteuid() == 0
    os.mkdir(root, 0o755)
    os.chmod(root, 0o755)
    for path, kind, mode, uid, data in entries:
        full = os.path.join(root, path)
        if kind == "dir":
            os.mkdir(full, mode)
        elif kind == "link":
            os.symlink(data, full)
            continue
        else:
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode)
            try:
                if data is None:
                    _copy_into(busybox, fd)
                else:
                    os.write(fd, data)
            finally:
                os.close(fd)
        # the umask must not decide the image's modes
        os.chmod(full, mode)
        if as_root and uid:
            try:
                os.chown(full, uid, uid)
            except OSError as err:
                # rootless with its own id mapped only: other ids cannot own files (EINVAL)
                if err.errno != 22:
                    raise
    for path, _, _, _, _ in entries:
        os.utime(os.path.join(root, path), (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(root, (EPOCH, EPOCH))
    return root


def build_busybox_tar(dest_tar, busybox=BUSYBOX):
    """Write the image as an uncompressed tarball at `dest_tar` (root-owned entries whoever
    builds it, fixed mtimes, sorted) and return `dest_tar`."""
    import io
    import tarfile
    entries = build_busybox_entries(read_busybox_applets(busybox))
    dest_tar = os.path.abspath(dest_tar)
    partial = "%s.partial-%d" % (dest_tar, os.getpid())
    try:
        with open(busybox, "rb") as binary:
            blob = binary.read()
        with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
            for path, kind, mode, uid, data in entries:
                info = tarfile.TarInfo(path)
                info.mode = mode
                info.uid = info.gid = uid
                info.uname = info.gname = ""
                info.mtime = EPOCH
                body = None
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                elif kind == "link":
                    info.type = tarfile.SYMTYPE
                    info.linkname = data
                else:
                    body = blob if data is None else data
                    info.size = len(body)
                tar.addfile(info, None if body is None else io.BytesIO(body))
        os.rename(partial, dest_tar)
    except OSError as err:
        _remove_file(partial)
        raise ImageError("cannot write the busybox tarball %s: %s" % (dest_tar, err.strerror or err))
    except BaseException:
        _remove_file(partial)
        raise
    return dest_tar


def _copy_into(source, fd):
    with open(source, "rb") as src:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            os.write(fd, chunk)


def _is_empty_dir(path):
    return os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)


def _remove_tree(path):
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.lexists(path):
        import shutil
        shutil.rmtree(path, ignore_errors=True)


def _remove_file(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def main(argv=None):
    """python3 -m capsa.busybox DEST [--tar] [--replace] [--busybox PATH]"""
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {"--tar": False, "--replace": False}
    busybox = BUSYBOX
    paths = []
    while argv:
        arg = argv.pop(0)
        if arg in flags:
            flags[arg] = True
        elif arg == "--busybox" and argv:
            busybox = argv.pop(0)
        elif arg.startswith("-"):
            sys.stderr.write("capsa.busybox: unknown flag %s (use DEST [--tar] [--replace] "
                             "[--busybox PATH])\n" % arg)
            return 2
        else:
            paths.append(arg)
    if len(paths) != 1:
        sys.stderr.write("usage: python3 -m capsa.busybox DEST [--tar] [--replace] "
                         "[--busybox PATH]\n")
        return 2
    try:
        if flags["--tar"]:
            build_busybox_tar(paths[0], busybox)
        else:
            build_busybox_rootfs(paths[0], busybox, replace=flags["--replace"])
    except ImageError as err:
        sys.stderr.write("capsa: " + err.line() + "\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
