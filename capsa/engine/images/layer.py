"""Unpacking one layer tarball into its own folder, in the form overlayfs reads.

Owns tar entry safety (no `..`, nothing written through a symlink or a non-folder), whiteout and
opaque-folder translation (`.wh.NAME` -> 0:0 char device, `.wh..wh..opq` -> trusted.overlay.opaque),
ownership, modes, xattrs, hard links and device nodes. Imports only the standard library and errors.
"""
import errno
import os
import stat

from capsa.errors import ImageError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
# A layer must never carry overlayfs' own control xattrs: trusted.overlay.redirect or .origin in
# a hostile layer would make overlayfs look up paths the layer does not own.
# Rootless, overlayfs reads the same control xattrs under user.overlay. (mount option userxattr).
_REFUSED_XATTR_PREFIX = ("trusted.overlay.", "user.overlay.")
_CHUNK = 1 << 20


def read_in_userns():
    """Cached: whether capsa runs in a user namespace (rootless), where overlayfs keeps its own
    xattrs as user.overlay.* (mounted with userxattr) and trusted.* cannot be written."""
    if not _USERNS:
        from capsa.userns import read_in_userns as read
        _USERNS.append(read())
    return _USERNS[0]


_USERNS = []


def build_overlay_xattr(name):
    return ("user.overlay." if read_in_userns() else "trusted.overlay.") + name


class HashingReader:
    """A file-like reader that hashes what passes through (the diff_id of a layer)."""

    __slots__ = ("raw", "hash", "size")

    def __init__(self, raw):
        import hashlib
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n=-1):
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self):
        while self.read(_CHUNK):
            pass
        return "sha256:" + self.hash.hexdigest()


def apply_copy_stream(read, out, progress=None, digest=None, total=None, done=0):
    """Copy chunks from `read(n)` into the file `out` until EOF; report (digest, done, total)."""
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            return done
        out.write(chunk)
        done += len(chunk)
        if progress:
            progress(digest, done, total)


def read_compression(path):
    """'gzip', 'zstd', 'xz', 'bzip2' or None (plain tar), from the file's magic bytes."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"BZh":
        return "bzip2"
    return None


def zlib_error():
    import zlib
    return zlib.error


def one_line(exc):
    """The first line of an exception's text (tarfile joins several reasons with newlines)."""
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(":") if lines else exc.__class__.__name__


class DecompressedFile:
    """Open `path` decompressed (gzip/xz/bzip2 in-process, zstd through the zstd command)."""

    def __init__(self, path):
        self.path = path
        self.proc = None
        kind = read_compression(path)
        if kind == "gzip":
            import gzip
            self.stream = gzip.open(path, "rb")
        elif kind == "xz":
            import lzma
            self.stream = lzma.open(path, "rb")
        elif kind == "bzip2":
            import bz2
            self.stream = bz2.open(path, "rb")
        elif kind == "zstd":
            import subprocess
            try:
                self.proc = subprocess.Popen(["zstd", "-dcq", "--", path], stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL)
            except FileNotFoundError:
                raise ImageError("%s is zstd-compressed but the zstd command is missing" % path,
                                 hint="apt-get install zstd") from None
            self.stream = self.proc.stdout
        else:
            self.stream = open(path, "rb")

    def read(self, n=-1):
        try:
            return self.stream.read(n)
        except (OSError, EOFError, ValueError, zlib_error()) as exc:
            raise ImageError("%s: corrupt compressed data (%s)" % (self.path, one_line(exc)),
                             hint="the archive is broken; download or build it again") from None

    def close(self):
        self.stream.close()
        if self.proc is not None:
            if self.proc.wait() != 0:
                raise ImageError("%s: zstd could not decompress it" % self.path,
                                 hint="the archive is broken; download or build it again")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            try:
                self.close()
            except ImageError:
                pass


def build_entry_path(name):
    """Normalise a tar member name to a relative path; refuse `..` (an escape)."""
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise ImageError("layer entry %r climbs out of the layer with '..'" % name,
                             field="layer", hint="the image is hostile or broken; it was refused")
        parts.append(part)
    return "/".join(parts)


class _Unpacker:
    __slots__ = ("root", "overlay", "dirs", "dir_meta", "owners")

    def __init__(self, root, overlay):
        self.root = root
        self.overlay = overlay
        self.dirs = {""}          # relative paths verified to be real folders in this layer
        self.dir_meta = {}        # rel -> member, applied after all entries (children touch mtimes)
        self.owners = os.geteuid() == 0

    def full(self, rel):
        return self.root + "/" + rel if rel else self.root

    def ensure_parent(self, rel, entry, create=True):
        parent = rel.rpartition("/")[0]
        if parent in self.dirs:
            return
        path = ""
        for comp in parent.split("/"):
            path = path + "/" + comp if path else comp
            if path in self.dirs:
                continue
            try:
                st = os.lstat(self.full(path))
            except FileNotFoundError:
                if not create:
                    raise ImageError("layer entry %r links to %r, which is not in the layer"
                                     % (entry, rel), field="layer",
                                     hint="the image is broken; it was refused") from None
                os.mkdir(self.full(path), 0o755)
                self.dirs.add(path)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise ImageError("layer entry %r would be written through %r, which is a %s, "
                                 "not a folder" % (entry, path, "symlink" if stat.S_ISLNK(st.st_mode)
                                                   else "file"),
                                 field="layer", hint="the image is hostile or broken; it was refused")
            self.dirs.add(path)

    def clear(self, rel, keep_dir):
        """Make room for a new entry at rel; returns True when an existing folder is kept."""
        full = self.full(rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            import shutil
            shutil.rmtree(full)
            prefix = rel + "/"
            self.dirs = {d for d in self.dirs if d != rel and not d.startswith(prefix)}
            for d in [d for d in self.dir_meta if d == rel or d.startswith(prefix)]:
                del self.dir_meta[d]
        else:
            os.unlink(full)
        return False

    def set_meta(self, rel, member, fd=None):
        full = self.full(rel)
        is_link = member.issym()
        if self.owners:
            try:
                if fd is not None:
                    os.fchown(fd, member.uid, member.gid)
                else:
                    os.chown(full, member.uid, member.gid, follow_symlinks=False)
            except OSError as exc:
                # rootless, mapped to its own id only: ids outside the map cannot own files
                # (EINVAL); they stay the caller's, root inside
                if exc.errno != errno.EINVAL or not read_in_userns():
                    raise
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                name = key[len("SCHILY.xattr."):]
                if name.startswith(_REFUSED_XATTR_PREFIX):
                    continue
                if isinstance(value, str):
                    value = value.encode("utf-8", "surrogateescape")
                try:
                    os.setxattr(fd if fd is not None else full, name, value,
                                follow_symlinks=False if fd is None else True)
                except OSError as exc:
                    # user.* on a symlink, or a filesystem without that namespace
                    if exc.errno not in (1, 95):
                        raise
        if not is_link:
            if fd is not None:
                os.fchmod(fd, member.mode & 0o7777)
            else:
                os.chmod(full, member.mode & 0o7777)
        mtime = int(member.mtime * 1e9)
        if fd is not None:
            os.utime(fd, ns=(mtime, mtime))
        else:
            os.utime(full, ns=(mtime, mtime), follow_symlinks=False)

    def whiteout(self, rel, base, member_name):
        parent = rel.rpartition("/")[0]
        if base == OPAQUE_MARKER:
            if self.overlay:
                os.setxattr(self.full(parent), build_overlay_xattr("opaque"), b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return      # other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs)
        hidden = base[len(WHITEOUT_PREFIX):]
        target = parent + "/" + hidden if parent else hidden
        self.clear(target, False)
        if self.overlay:
            os.mknod(self.full(target), stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def entry(self, tar, member):
        rel = build_entry_path(member.name)
        if not rel:
            if member.isdir():
                self.dir_meta[""] = member
            return
        self.ensure_parent(rel, member.name)
        base = rel.rpartition("/")[2]
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(rel, base, member.name)
            return
        full = self.full(rel)
        if member.isdir():
            if not self.clear(rel, True):
                os.mkdir(full, 0o700)
            self.dirs.add(rel)
            self.dir_meta[rel] = member
            return
        self.clear(rel, False)
        if member.isreg():
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            try:
                src = tar.extractfile(member)
                left = member.size
                while left > 0:
                    data = src.read(min(_CHUNK, left))
                    if not data:
                        raise ImageError("layer entry %r is truncated" % member.name, field="layer",
                                         hint="the archive is broken; download or build it again")
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    left -= len(data)
                self.set_meta(rel, member, fd)
            finally:
                os.close(fd)
        elif member.issym():
            os.symlink(member.linkname, full)
            self.set_meta(rel, member)
        elif member.islnk():
            target = build_entry_path(member.linkname)
            if not target:
                raise ImageError("layer entry %r hard-links to the layer root" % member.name,
                                 field="layer", hint="the image is broken; it was refused")
            self.ensure_parent(target, member.name, create=False)
            tfull = self.full(target)
            try:
                st = os.lstat(tfull)
            except FileNotFoundError:
                raise ImageError("layer entry %r hard-links to %r, which is not in the layer"
                                 % (member.name, member.linkname), field="layer",
                                 hint="the image is broken; it was refused") from None
            if stat.S_ISDIR(st.st_mode):
                raise ImageError("layer entry %r hard-links to the folder %r" % (member.name,
                                 member.linkname), field="layer", hint="the image was refused")
            os.link(tfull, full, follow_symlinks=False)
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            os.mknod(full, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            self.set_meta(rel, member)
        else:
            raise ImageError("layer entry %r has an unsupported tar type %r" % (member.name,
                             member.type), field="layer", hint="the image was refused")

    def finish(self):
        for rel in sorted(self.dir_meta, reverse=True):
            # chmod(2) follows symlinks: a folder entry later replaced by a symlink to /etc must
            # not lend its mode to the host's /etc
            if stat.S_ISDIR(os.lstat(self.full(rel)).st_mode):
                self.set_meta(rel, self.dir_meta[rel])


def apply_unpack_layer(stream, dest, overlay=True):
    """Unpack the tar read from `stream` (already decompressed) into the existing empty folder
    `dest`. With overlay=False whiteouts delete instead of being translated (a flat rootfs).

    Raises ImageError for hostile or broken entries; the caller removes `dest` then.
    """
    import tarfile
    unpacker = _Unpacker(os.fspath(dest), overlay)
    try:
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tar:
            for member in tar:
                unpacker.entry(tar, member)
    except tarfile.TarError as exc:
        raise ImageError("layer is not a valid tar archive (%s)" % one_line(exc), field="layer",
                         hint="the archive is broken; download or build it again") from None
    except EOFError:
        raise ImageError("layer tar archive ends early", field="layer",
                         hint="the archive is broken; download or build it again") from None
    unpacker.finish()
