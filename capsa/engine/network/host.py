"""Host facts and host commands the network manager needs besides the kernel seam.

Owns: running CNI plugins and iptables (os.posix_spawn), finding plugins on CNI_PATH, the
host's routes, links, resolv.conf and hosts, probing whether a host port is taken, and whether
a pid still runs.
Tests replace the whole object with a fake of the same methods.
"""
import os

from capsa.errors import NetworkError

PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni")
PLUGIN_TIMEOUT = 60
# -w: the legacy backend fails at once while another program holds the xtables lock (the
# plugins' go-iptables waits with -w too); iptables-nft accepts and ignores it
_RESTORE = ["iptables-restore", "-w", "--noflush"]


class HostSystem:
    """The real host."""

    def __init__(self, plugin_dirs=None):
        env = os.environ.get("CNI_PATH")
        self.plugin_dirs = list(plugin_dirs or (env.split(":") if env else PLUGIN_DIRS))

    def find_plugin(self, name):
        if "/" in name or not name:
            raise NetworkError("bad CNI plugin type %r" % (name,))
        for folder in self.plugin_dirs:
            path = os.path.join(folder, name)
            if os.access(path, os.X_OK):
                return path
        raise NetworkError("CNI plugin %r not found in %s" % (name, ":".join(self.plugin_dirs)),
                           hint="apt-get install containernetworking-plugins, or set CNI_PATH")

    def run_plugin(self, path, env, stdin):
        return self.start_plugin(path, env, stdin)()

    def start_plugin(self, path, env, stdin):
        """Start a plugin; the returned function waits for it -> (rc, stdout, stderr). Plugins of
        different interfaces are independent (loopback beside the bridge chain at attach)."""
        return _spawn([path], stdin, env).wait

    def read_routes(self):
        """IPv4 routes of the host's main table: [(subnet-text, dev)] from /proc/net/route."""
        import socket
        import struct
        routes = []
        with open("/proc/net/route") as handle:
            next(handle, None)
            for line in handle:
                words = line.split()
                if len(words) < 8:
                    continue
                dest = socket.inet_ntoa(struct.pack("<I", int(words[1], 16)))
                mask = bin(int(words[7], 16)).count("1")
                routes.append(("%s/%d" % (dest, mask), words[0]))
        return routes

    def read_links(self):
        try:
            return set(os.listdir("/sys/class/net"))
        except OSError:
            return set()

    def is_bridge(self, name):
        return os.path.isdir(os.path.join("/sys/class/net", name, "bridge"))

    def delete_link(self, name):
        rc, _, err = _spawn(["ip", "link", "delete", "dev", name]).wait()
        if rc != 0 and name in self.read_links():
            raise NetworkError("cannot delete link %s: %s" % (name, err.decode().strip()))

    def remove_rules(self, tags, addresses=()):
        return self.start_remove_rules(tags, addresses)()

    def start_remove_rules(self, tags, addresses=()):
        """Delete the iptables rules whose comment carries one of `tags`, the per-container chains
        they jump to, and the firewall plugin's CNI-FORWARD rules of `addresses`, with one
        iptables-save and one iptables-restore --noflush (one iptables exec per rule: 63-76 ms
        measured). The restore runs while the caller goes on; the returned function waits for it
        and returns the removed lines as "table: line" strings."""
        from capsa.engine.network.rules import (
            build_restore, build_rule_removals, build_still_present)
        removals = build_rule_removals(self.read_rules(), tags, addresses)
        if not removals:
            return lambda: []
        restore = _spawn(_RESTORE, build_restore(removals).encode())

        def wait():
            # iptables-nft-restore spends 10-14 ms in close() of its netlink socket after the
            # commit (strace): once iptables-save shows the rules gone, its exit is not awaited
            if restore.running() and not build_still_present(self.read_rules(), removals):
                restore.abandon()
                return ["%s: %s" % r for r in removals]
            if restore.wait()[0] == 0:
                return ["%s: %s" % r for r in removals]
            # A table commits all its lines or none: a rule another CNI user removed between
            # save and restore fails the whole table, so fall back to one call per line.
            import shlex
            removed = []
            for table, line in removals:
                if _spawn(["iptables", "-w", "-t", table] + shlex.split(line)).wait()[0] == 0:
                    removed.append("%s: %s" % (table, line))
            return removed
        return wait

    def read_rules(self, table=None):
        """iptables-save text of `table` (all tables when None); "" when iptables is missing."""
        rc, out, _ = _spawn(["iptables-save"] + (["-t", table] if table else [])).wait()
        return out.decode(errors="replace") if rc == 0 else ""

    def add_container_rules(self, network, container_id, masquerade=(), firewall=()):
        """The bridge plugin's masquerade rules and, once its chains exist, the firewall plugin's
        ADD rules, with one iptables-save and one iptables-restore --noflush (~4 ms; the plugins'
        own iptables execs take 25-30 ms and 15-20 ms). Returns False when the firewall's chains
        or jumps are missing: its plugin must run."""
        from capsa.engine.network.rules import build_container_rules, build_restore
        adds, ready = build_container_rules(self.read_rules(), network, container_id, masquerade,
                                            firewall)
        if not adds:
            return ready
        rc, _, err = _spawn(_RESTORE, build_restore(adds).encode()).wait()
        if rc != 0:
            raise NetworkError("iptables-restore could not add the rules of container %s: %s" % (
                container_id, err.decode(errors="replace").strip() or "exit status %d" % rc),
                field="network " + network, hint="check `iptables-save` and the iptables backend")
        return ready

    def read_text(self, path):
        try:
            with open(path) as handle:
                return handle.read()
        except OSError:
            return ""

    def default_route_device(self):
        for subnet, dev in self.read_routes():
            if subnet == "0.0.0.0/0":
                return dev
        return None

    def port_taken(self, ip, port, proto):
        """Is host port `port` bound by a host process? (iptables DNAT would silently shadow it.)"""
        import socket
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                # TIME_WAIT leftovers of closed connections do not make a port taken.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip or "0.0.0.0", port))
            return False
        except OSError:
            return True
        finally:
            sock.close()

    def pick_port(self, ip, proto):
        import socket
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        try:
            sock.bind((ip or "0.0.0.0", 0))
            return sock.getsockname()[1]
        finally:
            sock.close()

    def owner(self):
        """(pid, start time) of this process, to tell a crashed attach from one in progress."""
        return os.getpid(), read_start_time(os.getpid())

    def owner_alive(self, owner):
        if not owner:
            return False
        pid, start = owner
        return read_start_time(pid) == start


def _spawn(argv, stdin=b"", env=None):
    """Start argv (argv[0] a path, or a name looked up on PATH) with `stdin` fed and its output
    captured -> a _Child. os.posix_spawn, not subprocess: importing subprocess (locale, re,
    threading, selectors, signal) costs ~4 ms on every bridge run. The child gets the three
    pipes alone."""
    for pid in list(_ABANDONED):
        if _reaped(pid):
            _ABANDONED.remove(pid)
    pipes = []
    try:
        for _ in range(3):
            pipes.append(os.pipe())
        actions = [(os.POSIX_SPAWN_DUP2, pipes[0][0], 0), (os.POSIX_SPAWN_DUP2, pipes[1][1], 1),
                   (os.POSIX_SPAWN_DUP2, pipes[2][1], 2)]
        # fds this process inherited without close-on-exec would reach the plugin (subprocess's
        # close_fds); posix_spawn closes them in the child (Python 3.11 has no CLOSEFROM action)
        actions.extend((os.POSIX_SPAWN_CLOSE, fd) for fd in _open_fds() if fd > 2)
        spawn = os.posix_spawn if "/" in argv[0] else os.posix_spawnp
        pid = spawn(argv[0], argv, os.environ if env is None else env, file_actions=actions)
    except OSError as exc:
        for r, w in pipes:
            os.close(r)
            os.close(w)
        return _Child(None, None, None, None, str(exc).encode())
    for fd in (pipes[0][0], pipes[1][1], pipes[2][1]):
        os.close(fd)
    feed = pipes[0][1]
    if len(stdin) <= 4096:
        # PIPE_BUF fits an empty pipe at once: the child starts reading without waiting for us
        try:
            os.write(feed, stdin)
        except BrokenPipeError:
            pass
        os.close(feed)
        feed, stdin = None, b""
    return _Child(pid, feed, pipes[1][0], pipes[2][0], stdin)


# children whose exit nobody waits for (_Child.abandon), reaped by later spawns
_ABANDONED = []


def _reaped(pid):
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


class _Child:
    """A started program: wait() -> (rc, stdout, stderr), rc 124 after PLUGIN_TIMEOUT s and 126
    when it could not start (stderr then says why)."""
    __slots__ = ("pid", "feed", "out", "err", "stdin", "status")

    def __init__(self, pid, feed, out, err, stdin):
        self.pid, self.feed, self.out, self.err, self.stdin = pid, feed, out, err, stdin
        self.status = None

    def running(self):
        if self.pid is None or self.status is not None:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.status = status
        return not pid

    def abandon(self):
        """Stop caring: close our pipe ends; its exit is reaped by a later spawn (or by init)."""
        for fd in (self.feed, self.out, self.err):
            if fd is not None:
                os.close(fd)
        _ABANDONED.append(self.pid)

    def wait(self):
        if self.pid is None:
            return 126, b"", self.stdin
        import select
        import time
        poller = select.poll()
        chunks = {self.out: [], self.err: []}
        view = memoryview(self.stdin)
        live = set(chunks)
        if self.feed is not None:
            poller.register(self.feed, select.POLLOUT)
            live.add(self.feed)
        poller.register(self.out, select.POLLIN)
        poller.register(self.err, select.POLLIN)
        deadline = time.monotonic() + PLUGIN_TIMEOUT
        while live:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(self.pid, 9)
                break
            for fd, _ in poller.poll(left * 1000):
                if fd == self.feed:
                    try:
                        view = view[os.write(fd, view[:65536]):]
                    except BrokenPipeError:
                        view = view[:0]
                    done = not view
                else:
                    data = os.read(fd, 65536)
                    chunks[fd].append(data)
                    done = not data
                if done:
                    poller.unregister(fd)
                    os.close(fd)
                    live.discard(fd)
        for fd in live:
            os.close(fd)
        status = self.status if self.status is not None else os.waitpid(self.pid, 0)[1]
        if live:
            return 124, b"", b"timed out after %d s" % PLUGIN_TIMEOUT
        return (os.waitstatus_to_exitcode(status), b"".join(chunks[self.out]),
                b"".join(chunks[self.err]))


def _open_fds():
    fds = [int(name) for name in os.listdir("/proc/self/fd")]
    # the last one listed may be the listing's own, closed by now
    return [fd for fd in fds if _is_open(fd)]


def _is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def read_start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            stat = handle.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])
