"""Host facts and host commands the network manager needs besides the kernel seam.

Owns: running CNI plugins (subprocess), finding them on CNI_PATH, the host's routes, links,
resolv.conf and hosts, probing whether a host port is taken, and whether a pid still runs.
Tests replace the whole object with a fake of the same methods.
"""
import os

from capsa.errors import NetworkError

PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni")
PLUGIN_TIMEOUT = 60


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
        import subprocess
        try:
            proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, close_fds=True)
        except OSError as exc:
            answer = (126, b"", str(exc).encode())
            return lambda: answer

        def wait():
            try:
                out, err = proc.communicate(stdin, timeout=PLUGIN_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return 124, b"", b"timed out after %d s" % PLUGIN_TIMEOUT
            return proc.returncode, out, err
        return wait

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
        import subprocess
        done = subprocess.run(["ip", "link", "delete", "dev", name], capture_output=True)
        if done.returncode != 0 and name in self.read_links():
            raise NetworkError("cannot delete link %s: %s" % (name, done.stderr.decode().strip()))

    def remove_rules(self, tags, addresses=()):
        return self.start_remove_rules(tags, addresses)()

    def start_remove_rules(self, tags, addresses=()):
        """Delete the iptables rules whose comment carries one of `tags`, the per-container chains
        they jump to, and the firewall plugin's CNI-FORWARD rules of `addresses`, with one
        iptables-save and one iptables-restore --noflush (one iptables exec per rule: 63-76 ms
        measured). The restore runs while the caller goes on; the returned function waits for it
        and returns the removed lines as "table: line" strings."""
        import subprocess
        from capsa.engine.network.rules import build_restore, build_rule_removals
        removals = build_rule_removals(self.read_rules(), tags, addresses)
        if not removals:
            return lambda: []
        try:
            proc = subprocess.Popen(["iptables-restore", "--noflush"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    close_fds=True)
        except OSError:
            return lambda: []
        # a few hundred bytes: the pipe takes them without blocking
        proc.stdin.write(build_restore(removals).encode())
        proc.stdin.close()

        def wait():
            if proc.wait() == 0:
                return ["%s: %s" % r for r in removals]
            # A table commits all its lines or none: a rule another CNI user removed between
            # save and restore fails the whole table, so fall back to one call per line.
            import shlex
            removed = []
            for table, line in removals:
                done = subprocess.run(["iptables", "-w", "-t", table] + shlex.split(line),
                                      capture_output=True)
                if done.returncode == 0:
                    removed.append("%s: %s" % (table, line))
            return removed
        return wait

    def read_rules(self, table=None):
        """iptables-save text of `table` (all tables when None); "" when iptables is missing."""
        import subprocess
        try:
            done = subprocess.run(["iptables-save"] + (["-t", table] if table else []),
                                  capture_output=True)
        except OSError:
            return ""
        # bytes, not text=True: text mode imports locale on every run
        return done.stdout.decode(errors="replace") if done.returncode == 0 else ""

    def add_container_rules(self, network, container_id, masquerade=(), firewall=()):
        """The bridge plugin's masquerade rules and, once its chains exist, the firewall plugin's
        ADD rules, with one iptables-save and one iptables-restore --noflush (~4 ms; the plugins'
        own iptables execs take 25-30 ms and 15-20 ms). Returns False when the firewall's chains
        or jumps are missing: its plugin must run."""
        import subprocess
        from capsa.engine.network.rules import build_container_rules, build_restore
        adds, ready = build_container_rules(self.read_rules(), network, container_id, masquerade,
                                            firewall)
        if not adds:
            return ready
        done = subprocess.run(["iptables-restore", "--noflush"],
                              input=build_restore(adds).encode(), capture_output=True)
        if done.returncode != 0:
            raise NetworkError("iptables-restore could not add the rules of container %s: %s" % (
                container_id, done.stderr.decode(errors="replace").strip() or
                "exit status %d" % done.returncode),
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


def read_start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            stat = handle.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])
