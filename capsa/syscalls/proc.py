"""Namespace and process calls of the kernel seam: unshare, setns, identity, limits, scheduling, exec.

Every method changes kernel state for the calling process (or a pid it names) and is mirrored by
capsa.syscalls.fake; imports only ctypes, os, libc and errors.
"""
import ctypes
import os

from capsa.errors import KernelError
from capsa.syscalls.libc import check, fail, fsencode, libc, syscall

CLONE_NEWTIME = 0x00000080
# <linux/sockios.h>, <net/if.h>: struct ifreq is a 16-byte name and a 24-byte union
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_GET_SECUREBITS = 27
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

TIOCSCTTY = 0x540E


class _SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32),
                ("sched_flags", ctypes.c_uint64), ("sched_nice", ctypes.c_int32),
                ("sched_priority", ctypes.c_uint32), ("sched_runtime", ctypes.c_uint64),
                ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64)]


class _Rlimit(ctypes.Structure):
    _fields_ = [("cur", ctypes.c_uint64), ("max", ctypes.c_uint64)]


def _os(what, fn, *args):
    try:
        return fn(*args)
    except OSError as exc:
        fail(what, exc.errno)


class ProcCalls:
    """Calls that change the calling process: namespaces, credentials, limits, exec."""

    def link_up(self, name):
        """Bring a network interface of the current network namespace up (SIOCSIFFLAGS)."""
        sock = check(libc.socket(2, 2 | 0o2000000, 0), "socket(AF_INET)")  # DGRAM|CLOEXEC
        try:
            ifreq = ctypes.create_string_buffer(name.encode(), 40)
            check(libc.ioctl(sock, SIOCGIFFLAGS, ifreq), "SIOCGIFFLAGS %s" % name)
            flags = int.from_bytes(ifreq.raw[16:18], "little") | IFF_UP
            ifreq[16:18] = flags.to_bytes(2, "little")
            check(libc.ioctl(sock, SIOCSIFFLAGS, ifreq), "SIOCSIFFLAGS %s up" % name)
        finally:
            os.close(sock)

    def run_helper(self, path, argv):
        """Run a host helper program (newuidmap, newgidmap) to completion: -> (exit status,
        its stderr text). Never through a shell; stdin and stdout are /dev/null."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                pid = os.posix_spawn(path, argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                     file_actions=[(os.POSIX_SPAWN_DUP2, null, 0),
                                                   (os.POSIX_SPAWN_DUP2, null, 1),
                                                   (os.POSIX_SPAWN_DUP2, write_end, 2)])
            except OSError as exc:
                raise KernelError("cannot run %s: %s" % (path, exc.strerror), errno=exc.errno)
            os.close(write_end)
            write_end = -1
            chunks = []
            while True:
                chunk = os.read(read_end, 4096)
                if not chunk:
                    break
                chunks.append(chunk)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")
        finally:
            for fd in (read_end, write_end, null):
                if fd >= 0:
                    os.close(fd)


    def unshare(self, flags):
        check(syscall("unshare", ctypes.c_int(flags)), "unshare(%#x)" % flags)

    def setns(self, fd, nstype):
        check(syscall("setns", fd, ctypes.c_int(nstype)), "setns(fd %d, %#x)" % (fd, nstype))

    def sethostname(self, name):
        data = name.encode()
        check(syscall("sethostname", data, ctypes.c_size_t(len(data))), "sethostname %r" % name)

    def setdomainname(self, name):
        data = name.encode()
        check(syscall("setdomainname", data, ctypes.c_size_t(len(data))), "setdomainname %r" % name)

    def prctl(self, option, arg2=0, arg3=0, arg4=0, arg5=0):
        return check(libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                                ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)),
                     "prctl(%d, %r)" % (option, arg2))

    def set_name(self, name):
        buf = ctypes.create_string_buffer(name.encode()[:15])
        check(libc.prctl(PR_SET_NAME, buf, 0, 0, 0), "prctl(PR_SET_NAME)")

    def setresgid(self, rgid, egid, sgid):
        _os("setresgid %d" % egid, os.setresgid, rgid, egid, sgid)

    def setresuid(self, ruid, euid, suid):
        _os("setresuid %d" % euid, os.setresuid, ruid, euid, suid)

    def setgroups(self, gids):
        _os("setgroups %r" % (gids,), os.setgroups, list(gids))

    def prlimit(self, pid, resource, soft, hard):
        new = _Rlimit(soft, hard)
        check(libc.prlimit(pid, resource, ctypes.byref(new), None),
              "setrlimit %d soft %d hard %d" % (resource, soft, hard))

    def getrlimit(self, resource):
        old = _Rlimit()
        check(libc.prlimit(0, resource, None, ctypes.byref(old)), "getrlimit %d" % resource)
        return old.cur, old.max

    def umask(self, mask):
        return os.umask(mask)

    def personality(self, persona):
        return check(syscall("personality", ctypes.c_ulong(persona)), "personality(%#x)" % persona)

    def ioprio_set(self, which, who, ioprio):
        check(syscall("ioprio_set", which, who, ioprio), "ioprio_set(%d)" % ioprio)

    def sched_setattr(self, pid, policy, flags, nice, priority, runtime, deadline, period):
        attr = _SchedAttr(ctypes.sizeof(_SchedAttr), policy, flags, nice, priority, runtime, deadline,
                          period)
        check(syscall("sched_setattr", pid, ctypes.byref(attr), 0), "sched_setattr(policy %d)" % policy)

    def sched_setaffinity(self, pid, cpus):
        _os("sched_setaffinity %r" % (cpus,), os.sched_setaffinity, pid, cpus)

    def setsid(self):
        _os("setsid", os.setsid)

    def set_controlling_tty(self, fd):
        import fcntl  # builtin extension; only the terminal path needs it
        _os("ioctl TIOCSCTTY", fcntl.ioctl, fd, TIOCSCTTY, 0)

    def dup2(self, fd, fd2, inheritable=True):
        return _os("dup2 %d %d" % (fd, fd2), os.dup2, fd, fd2, inheritable)

    def kill(self, pid, sig):
        _os("kill %d %d" % (pid, sig), os.kill, pid, sig)

    def pidfd_open(self, pid):
        return check(syscall("pidfd_open", pid, 0), "pidfd_open %d" % pid)

    def pidfd_send_signal(self, pidfd, sig):
        check(syscall("pidfd_send_signal", pidfd, sig, None, 0), "pidfd_send_signal %d" % sig)

    def join_session_keyring(self, name):
        """keyctl(KEYCTL_JOIN_SESSION_KEYRING): a fresh session keyring, so the container does
        not share the caller's keys."""
        return check(syscall("keyctl", 1, name.encode() if name else None),
                     "keyctl(KEYCTL_JOIN_SESSION_KEYRING, %r)" % name)

    def execve(self, path, args, env):
        _os("exec %s" % path, os.execve, path, args, env)

    def execveat(self, dirfd, path, args, env, flags):
        argv = (ctypes.c_char_p * (len(args) + 1))(*[fsencode(a) for a in args], None)
        envp = (ctypes.c_char_p * (len(env) + 1))(*[fsencode(e) for e in env], None)
        check(syscall("execveat", dirfd, fsencode(path), argv, envp, flags), "execveat %s" % path)
