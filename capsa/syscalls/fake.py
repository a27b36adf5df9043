"""A recording fake of the kernel seam for unit tests: no root, no syscalls.

Complete by construction: it answers every public method of capsa.syscalls.kernel.Kernel,
records each call in `calls`, hands out fd numbers, keeps written files, and fails on request.
Must not be imported by anything outside tests.
"""
import errno as errnos
import os

from capsa.errors import KernelError
from capsa.syscalls.fs import PROC_SUPER_MAGIC
from capsa.syscalls.kernel import Kernel

_FD_RETURNING = ("open", "openat2", "open_tree", "fsopen", "fsmount", "pidfd_open")


class FakeKernel:
    """Records calls as tuples (name, *args). Configure `files`, `fs_types`, `failures`, `returns`."""

    def __init__(self):
        self.calls = []
        self.files = {}          # path -> bytes, for read_file / write_file
        self.fd_paths = {}       # fd -> path it was opened from
        self.fs_types = {}       # path -> statfs magic, for fstatfs_type
        self.failures = {}       # method name -> errno, or callable(args) -> errno or None
        self.returns = {}        # method name -> value, or callable(args) -> value
        self.rlimits = {}        # resource -> (soft, hard)
        self.cwd = "/"
        self._next_fd = 100

    def names(self):
        return [call[0] for call in self.calls]

    def calls_of(self, name):
        return [call[1:] for call in self.calls if call[0] == name]

    def _record(self, name, args, kwargs):
        self.calls.append((name,) + tuple(args) + tuple(sorted(kwargs.items())))
        failure = self.failures.get(name)
        if callable(failure):
            failure = failure(args)
        if failure:
            raise KernelError("%s%r: %s" % (name, tuple(args), os.strerror(failure)), errno=failure)
        if name in self.returns:
            value = self.returns[name]
            return value(args) if callable(value) else value
        special = getattr(self, "_do_" + name, None)
        if special is not None:
            return special(*args, **kwargs)
        if name in _FD_RETURNING:
            return self._new_fd(args[1] if name in ("openat2", "open_tree") else args[0])
        return None

    def _new_fd(self, path):
        fd = self._next_fd
        self._next_fd += 1
        self.fd_paths[fd] = path
        return fd

    def _do_read_file(self, path):
        if path not in self.files:
            raise KernelError("open %s: %s" % (path, os.strerror(errnos.ENOENT)), errno=errnos.ENOENT)
        return self.files[path]

    def _do_write_file(self, path, data, dirfd=None):
        self.files[path] = data.encode() if isinstance(data, str) else data

    def _do_fstatfs_type(self, fd):
        return self.fs_types.get(self.fd_paths.get(fd), PROC_SUPER_MAGIC if
                                 str(self.fd_paths.get(fd, "")).startswith("/proc") else 0xEF53)

    def _do_getrlimit(self, resource):
        return self.rlimits.get(resource, (1024, 20000))

    def _do_chdir(self, path):
        self.cwd = path

    def _do_getcwd(self):
        return self.cwd

    def _do_umask(self, mask):
        return 0o022

    def _do_run_helper(self, path, argv):
        return 0, ""


def _recorder(name):
    def method(self, *args, **kwargs):
        return self._record(name, args, kwargs)
    method.__name__ = name
    return method


for _name in dir(Kernel):
    if not _name.startswith("_") and callable(getattr(Kernel, _name)):
        setattr(FakeKernel, _name, _recorder(_name))
