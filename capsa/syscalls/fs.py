"""Filesystem and mount calls of the kernel seam: mount API (old and new), openat2, mknod, pivot_root.

Owns the constants of those calls. Every method changes or reads kernel state and is mirrored by
capsa.syscalls.fake; imports only ctypes, os, libc and errors.
"""
import ctypes
import os
import stat

from capsa.syscalls.libc import NR, check, fail, fsencode, libc, syscall

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_RELATIME = 0x0
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_IDMAP = 0x100000
MOUNT_ATTR_NOSYMFOLLOW = 0x200000

FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1

PROC_SUPER_MAGIC = 0x9FA0
SYSFS_MAGIC = 0x62656572
TMPFS_MAGIC = 0x01021994
DEVPTS_SUPER_MAGIC = 0x1CD1


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long), ("rest", ctypes.c_long * 14)]


def _os(what, fn, *args):
    try:
        return fn(*args)
    except OSError as exc:
        fail(what, exc.errno)


class FsCalls:
    """Mount and file calls. Paths are str or bytes; fds are ints owned by the caller."""

    def mount(self, source, target, fstype, flags, data=None):
        check(libc.mount(fsencode(source), fsencode(target), fsencode(fstype), flags,
                         fsencode(data)),
              "mount %s on %s (type %s, flags %#x, data %r)" % (source, target, fstype, flags, data))

    def umount2(self, target, flags):
        check(libc.umount2(fsencode(target), flags), "umount %s" % target)

    def pivot_root(self, new_root, put_old):
        check(syscall("pivot_root", fsencode(new_root), fsencode(put_old)),
              "pivot_root %s %s" % (new_root, put_old))

    def chroot(self, path):
        _os("chroot %s" % path, os.chroot, path)

    def chdir(self, path):
        _os("chdir %s" % path, os.chdir, path)

    def fchdir(self, fd):
        _os("fchdir %d" % fd, os.fchdir, fd)

    def getcwd(self):
        return _os("getcwd", os.getcwd)

    def mkdirat(self, dirfd, name, mode):
        _os("mkdir %s" % name, lambda: os.mkdir(name, mode, dir_fd=dirfd))

    def mknodat(self, dirfd, name, mode, device):
        _os("mknod %s" % name, lambda: os.mknod(name, mode, device, dir_fd=dirfd))

    def symlinkat(self, target, dirfd, name):
        _os("symlink %s -> %s" % (name, target), lambda: os.symlink(target, name, dir_fd=dirfd))

    def fchown(self, fd, uid, gid):
        _os("fchown fd %d" % fd, os.fchown, fd, uid, gid)

    def fchmod(self, fd, mode):
        _os("fchmod fd %d" % fd, os.fchmod, fd, mode)

    def open(self, path, flags, mode=0o600, dirfd=None):
        return _os("open %s" % path, lambda: os.open(path, flags | os.O_CLOEXEC, mode, dir_fd=dirfd))

    def openat2(self, dirfd, path, flags, mode=0, resolve=0):
        how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
        fd = syscall("openat2", dirfd, fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
        return check(fd, "openat2 %s" % path)

    def close(self, fd):
        try:
            os.close(fd)
        except OSError:
            pass

    def close_range(self, first, last, flags=0):
        check(syscall("close_range", ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags)),
              "close_range %d-%d" % (first, last))

    def read_file(self, path):
        """Read a whole small kernel file (procfs, sysfs, cgroupfs)."""
        fd = self.open(path, os.O_RDONLY)
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            os.close(fd)

    def write_file(self, path, data, dirfd=None):
        """One write(2) of `data` to an existing kernel file: cgroupfs, procfs, sysctl."""
        if isinstance(data, str):
            data = data.encode()
        fd = self.open(path, os.O_WRONLY, dirfd=dirfd)
        try:
            _os("write %s (%r)" % (path, data), os.write, fd, data)
        finally:
            os.close(fd)

    def write_fd(self, fd, data):
        if isinstance(data, str):
            data = data.encode()
        return _os("write fd %d" % fd, os.write, fd, data)

    def fstatfs_type(self, fd):
        buf = _Statfs()
        check(libc.fstatfs(fd, ctypes.byref(buf)), "fstatfs fd %d" % fd)
        return buf.f_type & 0xFFFFFFFF

    def fstat(self, fd):
        return _os("fstat fd %d" % fd, os.fstat, fd)

    def open_tree(self, dirfd, path, flags):
        return check(syscall("open_tree", dirfd, fsencode(path), ctypes.c_uint(flags)),
                     "open_tree %s" % path)

    def move_mount(self, from_dirfd, from_path, to_dirfd, to_path, flags):
        check(syscall("move_mount", from_dirfd, fsencode(from_path), to_dirfd, fsencode(to_path),
                      ctypes.c_uint(flags)),
              "move_mount %s to %s" % (from_path or from_dirfd, to_path or to_dirfd))

    def mount_setattr(self, dirfd, path, flags, attr_set, attr_clr, propagation=0, userns_fd=0):
        attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
        check(syscall("mount_setattr", dirfd, fsencode(path), ctypes.c_uint(flags),
                      ctypes.byref(attr), ctypes.sizeof(attr)),
              "mount_setattr %s (set %#x, clear %#x)" % (path or dirfd, attr_set, attr_clr))

    def fsopen(self, fstype):
        return check(syscall("fsopen", fsencode(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)),
                     "fsopen %s" % fstype)

    def fsconfig(self, fsfd, cmd, key=None, value=None, aux=0):
        check(syscall("fsconfig", fsfd, ctypes.c_uint(cmd), fsencode(key), fsencode(value), aux),
              "fsconfig %s=%s" % (key, value) if key else "fsconfig create")

    def fsmount(self, fsfd, attr_flags=0):
        return check(syscall("fsmount", fsfd, ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attr_flags)),
                     "fsmount")

    def readlinkat(self, dirfd, name):
        return _os("readlink %s" % name, lambda: os.readlink(name, dir_fd=dirfd))

    def unlinkat(self, dirfd, name):
        _os("unlink %s" % name, lambda: os.unlink(name, dir_fd=dirfd))

    def fchownat(self, dirfd, name, uid, gid):
        _os("chown %s" % name, lambda: os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False))

    def make_userns(self, uid_map, gid_map):
        """An fd of a new user namespace with these maps ("inside outside count" lines), for
        MOUNT_ATTR_IDMAP. A forked child unshares it and its /proc dir reaches the parent through
        pidfd_getfd: /proc/<pid> may belong to another pid namespace than fork's pid."""
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        done_r, done_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            answer = b"-"
            try:
                os.close(ready_r)
                os.close(done_w)
                proc_fd = os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                if syscall("unshare", ctypes.c_int(0x10000000)) == 0:
                    answer = str(proc_fd).encode()
                os.write(ready_w, answer)
                os.read(done_r, 1)
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(done_r)
        pidfd = -1
        try:
            pidfd = check(syscall("pidfd_open", pid, 0), "pidfd_open %d" % pid)
            answer = os.read(ready_r, 32)
            if not answer.isdigit():
                fail("unshare(CLONE_NEWUSER) for an idmapped mount", 1)
            proc_fd = check(syscall("pidfd_getfd", pidfd, int(answer), 0), "pidfd_getfd")
            try:
                if self.fstatfs_type(proc_fd) != PROC_SUPER_MAGIC:
                    fail("/proc is not procfs: refusing to write id maps there", 22)
                for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
                    fd = _os("open %s" % name, lambda: os.open(name, os.O_WRONLY | os.O_CLOEXEC,
                                                                 dir_fd=proc_fd))
                    try:
                        _os("write %s %r" % (name, text), os.write, fd, text.encode())
                    finally:
                        os.close(fd)
                return _os("open ns/user", lambda: os.open("ns/user", os.O_RDONLY | os.O_CLOEXEC,
                                                           dir_fd=proc_fd))
            finally:
                os.close(proc_fd)
        finally:
            if pidfd >= 0:
                os.close(pidfd)
            os.close(done_w)
            os.close(ready_r)
            os.waitpid(pid, 0)

    def copy_tree(self, src_dirfd, dst_dirfd):
        """Copy a directory's contents (files, dirs, symlinks, nodes; modes and owners) between
        two directory fds without following any symlink: tmpcopyup of a hostile image folder."""
        _copy_tree(src_dirfd, dst_dirfd, 0)


def _copy_tree(src, dst, depth):
    if depth > 64:
        fail("copy: directories nested deeper than 64", 40)
    for name in _os("list fd %d" % src, os.listdir, src):
        st = _os("stat %s" % name, lambda: os.stat(name, dir_fd=src, follow_symlinks=False))
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFLNK:
            _os("symlink %s" % name, lambda: os.symlink(os.readlink(name, dir_fd=src), name,
                                                         dir_fd=dst))
        elif kind == stat.S_IFDIR:
            _os("mkdir %s" % name, lambda: os.mkdir(name, 0o700, dir_fd=dst))
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            sub_src = _os("open %s" % name, lambda: os.open(name, flags, dir_fd=src))
            try:
                sub_dst = _os("open %s" % name, lambda: os.open(name, flags, dir_fd=dst))
                try:
                    _copy_tree(sub_src, sub_dst, depth + 1)
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
        elif kind == stat.S_IFREG:
            _copy_file(name, src, dst)
        else:
            _os("mknod %s" % name, lambda: os.mknod(name, st.st_mode, st.st_rdev, dir_fd=dst))
        _os("chown %s" % name, lambda: os.chown(name, st.st_uid, st.st_gid, dir_fd=dst,
                                                 follow_symlinks=False))
        if kind != stat.S_IFLNK:
            _os("chmod %s" % name, lambda: os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dst))


def _copy_file(name, src, dst):
    fd_in = _os("open %s" % name, lambda: os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                                   dir_fd=src))
    try:
        fd_out = _os("create %s" % name, lambda: os.open(
            name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
            dir_fd=dst))
        try:
            while True:
                chunk = os.read(fd_in, 1 << 20)
                if not chunk:
                    break
                while chunk:
                    chunk = chunk[os.write(fd_out, chunk):]
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
