"""`capsa cp` between the host and a container's (hostile) root filesystem, fd by fd.

Every path inside the rootfs is walked with O_NOFOLLOW from a directory fd, so a symlink or a
rename planted by the container cannot redirect a copy onto the host (docker cp's CVE-2019-14271
class of bugs). Symlinks are copied as links, never followed. Imports os/stat only.
"""
import os
import stat

from capsa.errors import UsageError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def build_parts(path):
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError("path " + path + " may not contain ..", field="cp",
                         hint="give a path from the container's /")
    return parts


def open_dir_inside(rootfs, parts, path):
    """A directory fd for rootfs/parts, refusing any symlink on the way."""
    fd = os.open(rootfs, _DIR)
    try:
        for part in parts:
            nfd = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError as err:
        os.close(fd)
        raise UsageError("cannot open " + path + " in the container: " + (err.strerror or ""),
                         field="cp", hint="every folder on the way must be a real folder "
                                          "(symlinks are not followed)") from None
    return fd


def apply_copy_out(rootfs, path, dest):
    """Copy the container's `path` to the host `dest` (into it when it is a folder)."""
    parts = build_parts(path)
    if not parts:
        raise UsageError("copy a path below /, not the whole root", field="cp")
    parent = open_dir_inside(rootfs, parts[:-1], path)
    try:
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except OSError:
            raise UsageError("no such file or directory in the container: " + path,
                             field="cp") from None
        target = os.path.join(dest, parts[-1]) if os.path.isdir(dest) else dest
        _copy_out(parent, parts[-1], st, target)
    finally:
        os.close(parent)


def _copy_out(dirfd, name, st, target):
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=dirfd), target)
    elif stat.S_ISREG(st.st_mode):
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                          stat.S_IMODE(st.st_mode))
            try:
                _pump(src, dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    elif stat.S_ISDIR(st.st_mode):
        sub = os.open(name, _DIR, dir_fd=dirfd)
        try:
            os.makedirs(target, exist_ok=True)
            for entry in sorted(os.listdir(sub)):
                _copy_out(sub, entry, os.stat(entry, dir_fd=sub, follow_symlinks=False),
                          os.path.join(target, entry))
            os.chmod(target, stat.S_IMODE(st.st_mode))
        finally:
            os.close(sub)
    # devices, fifos and sockets are not copied, as docker cp skips them


def apply_copy_in(src, rootfs, path):
    """Copy the host `src` into the container at `path` (into it when it is a folder)."""
    if not os.path.lexists(src):
        raise UsageError("no such file or directory: " + src, field="cp")
    parts = build_parts(path)
    name = os.path.basename(src.rstrip("/"))
    try:
        parent = open_dir_inside(rootfs, parts, path)
    except UsageError:
        if not parts:
            raise
        parent = open_dir_inside(rootfs, parts[:-1], path)
        name = parts[-1]
    try:
        _copy_in(src, parent, name)
    except OSError as err:
        raise UsageError("cannot write " + path + " in the container: " + (err.strerror or ""),
                         field="cp", hint="symlinks inside the container are not followed") \
            from None
    finally:
        os.close(parent)


def _copy_in(src, dirfd, name):
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), name, dir_fd=dirfd)
    elif stat.S_ISREG(st.st_mode):
        # O_NOFOLLOW: a symlink the container planted under this name is refused, not followed
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                      stat.S_IMODE(st.st_mode), dir_fd=dirfd)
        try:
            with open(src, "rb") as f:
                _pump(f.fileno(), dst)
        finally:
            os.close(dst)
    elif stat.S_ISDIR(st.st_mode):
        try:
            os.mkdir(name, stat.S_IMODE(st.st_mode), dir_fd=dirfd)
        except FileExistsError:
            pass
        sub = os.open(name, _DIR, dir_fd=dirfd)
        try:
            for entry in sorted(os.listdir(src)):
                _copy_in(os.path.join(src, entry), sub, entry)
        finally:
            os.close(sub)


def _pump(src, dst):
    while True:
        data = os.read(src, 1 << 20)
        if not data:
            return
        while data:
            data = data[os.write(dst, data):]
