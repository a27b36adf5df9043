"""Safe path resolution inside a hostile root filesystem: open and create without escaping it.

Every lookup is openat2(RESOLVE_IN_ROOT) from the root's fd, so `..` and absolute symlinks stay
inside (CVE-2021-30465, CVE-2024-45310); creation happens fd-relative, one component at a time.
Imports only os, the fs constants and errors; all calls go through the `kernel` passed in.
"""
import errno
import os
import stat

from capsa.errors import KernelError
from capsa.syscalls.fs import (RESOLVE_BENEATH, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS,
                               RESOLVE_NO_SYMLINKS)

IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
_MAX_LINKS = 40  # the kernel's own limit on symlinks in one lookup (ELOOP)


def split_path(path):
    return [part for part in path.split("/") if part and part != "."]


def open_in_root(kernel, root_fd, path, flags=os.O_PATH, no_symlinks=False):
    """An fd for `path` as the container will see it; ENOENT and friends raise KernelError."""
    resolve = IN_ROOT | (RESOLVE_NO_SYMLINKS if no_symlinks else 0)
    return kernel.openat2(root_fd, "/".join(split_path(path)) or ".", flags, 0, resolve)


def try_open_in_root(kernel, root_fd, path, flags=os.O_PATH):
    """Like open_in_root, but None when the path does not exist."""
    try:
        return open_in_root(kernel, root_fd, path, flags)
    except KernelError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise


def _create(kernel, dir_fd, name, is_dir, mode):
    if is_dir:
        kernel.mkdirat(dir_fd, name, mode)
    else:
        fd = kernel.openat2(dir_fd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                            mode, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
        kernel.close(fd)


def _follow(parts, index, link):
    """The path left to create after the component `index` turned out to be a symlink."""
    base = [] if link.startswith("/") else parts[:index]
    return base + split_path(link) + parts[index + 1:]


def make_in_root(kernel, root_fd, path, is_dir=True, mode=0o755):
    """Open `path` inside the root (O_PATH), creating missing parents as directories and the last
    component as a directory or an empty file. Returns (fd, created)."""
    parts = split_path(path)
    links = 0
    index = 0
    parent = kernel.openat2(root_fd, ".", os.O_PATH | os.O_DIRECTORY, 0, IN_ROOT)
    try:
        while index < len(parts):
            last = index == len(parts) - 1
            try:
                fd = open_in_root(kernel, root_fd, "/".join(parts[:index + 1]))
            except KernelError as err:
                if err.errno != errno.ENOENT:
                    raise
                fd = None
            created = False
            if fd is None:
                name = parts[index]
                try:
                    _create(kernel, parent, name, is_dir or not last, mode if last else 0o755)
                    created = True
                except KernelError as err:
                    if err.errno != errno.EEXIST:
                        raise
                    # A dangling symlink: continue where it points, still inside the root.
                    links += 1
                    if links > _MAX_LINKS:
                        raise KernelError("create %s: too many symlinks" % path, errno=errno.ELOOP)
                    parts = _follow(parts, index, kernel.readlinkat(parent, name))
                    index = 0
                    kernel.close(parent)
                    parent = kernel.openat2(root_fd, ".", os.O_PATH | os.O_DIRECTORY, 0, IN_ROOT)
                    continue
                # What we just made, never a symlink swapped in meanwhile.
                fd = kernel.openat2(parent, name, os.O_PATH | os.O_NOFOLLOW, 0,
                                    RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
            if last:
                return fd, created
            kernel.close(parent)
            parent = fd
            index += 1
        return kernel.openat2(root_fd, ".", os.O_PATH | os.O_DIRECTORY, 0, IN_ROOT), False
    finally:
        kernel.close(parent)


def is_dir_fd(kernel, fd):
    return stat.S_ISDIR(kernel.fstat(fd).st_mode)
