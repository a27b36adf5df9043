"""Rootless networking: the container's own network namespace, joined to the host's network by
slirp4netns (user-mode TCP/IP: NAT out, `-p` through its API socket), rootless podman's default.

Owns the namespace pin under <store>/network/slirp/<id>, the slirp4netns process (its pid and
start time in <id>.json) and the /etc files that go with 10.0.2.0/24. Runs inside the user's
rootless namespace (capsa.engine.rootless); imports os and capsa's errors, the rest lazily.
"""
import os

from capsa.errors import NetworkError

SLIRP4NETNS = "/usr/bin/slirp4netns"
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 2
# slirp4netns --configure's fixed addresses in its default 10.0.2.0/24
GUEST = "10.0.2.100"
DNS = "10.0.2.3"


def _dir(store_root):
    return os.path.join(store_root, "network", "slirp")


def build_etc_files(hostname):
    hosts = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
             "%s\t%s\n" % (GUEST, hostname))
    return hosts, "nameserver %s\n" % DNS


def build_hostfwd_requests(publish):
    """-p HOST:CONTAINER[/proto] specs -> slirp4netns API add_hostfwd requests."""
    requests = []
    for spec in publish:
        ports, _, proto = spec.partition("/")
        parts = ports.split(":")
        if len(parts) == 2:
            host_addr, host_port, guest_port = "0.0.0.0", parts[0], parts[1]
        elif len(parts) == 3:
            host_addr, host_port, guest_port = parts[0] or "0.0.0.0", parts[1], parts[2]
        else:
            raise NetworkError("rootless -p needs HOST:CONTAINER (got %r)" % spec,
                               field="--publish", hint="write -p 8080:80")
        if not (host_port.isdigit() and guest_port.isdigit()) or \
                not 0 < int(host_port) < 65536 or not 0 < int(guest_port) < 65536:
            raise NetworkError("bad port in %r" % spec, field="--publish",
                               hint="ports are 1 to 65535")
        requests.append({"execute": "add_hostfwd",
                         "arguments": {"proto": proto or "tcp", "host_addr": host_addr,
                                       "host_port": int(host_port),
                                       "guest_port": int(guest_port)}})
    return requests


def apply_attach(store_root, cid, hostname, publish, kernel=None):
    """Make and pin the container's network namespace, start slirp4netns on it and publish
    the ports. -> {"netns", "hosts", "resolv": paths}. Undoes itself on failure."""
    if kernel is None:
        from capsa.syscalls.kernel import Kernel
        kernel = Kernel()
    if not os.access(SLIRP4NETNS, os.X_OK):
        raise NetworkError("a rootless container's network needs slirp4netns",
                           field="--network", hint="install slirp4netns, or use --network none")
    requests = build_hostfwd_requests(publish)
    folder = _dir(store_root)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    pin = os.path.join(folder, cid)
    try:
        _pin_netns(kernel, pin)
        sock = _start(folder, cid, pin)
        for request in requests:
            _api(sock, request)
    except BaseException:
        apply_detach(store_root, cid, kernel)
        raise
    hosts, resolv = build_etc_files(hostname)
    paths = {}
    for suffix, text in ((".hosts", hosts), (".resolv", resolv)):
        paths[suffix] = pin + suffix
        with open(pin + suffix, "w") as handle:
            handle.write(text)
    # the engine bind-mounts these files over the image's /etc/hosts and /etc/resolv.conf
    return {"netns": pin, "hosts": paths[".hosts"], "resolv": paths[".resolv"]}


def _pin_netns(kernel, pin):
    """A child unshares a network namespace and binds it onto `pin` (in the rootless mount
    namespace, which every command shares), then exits; the bind keeps it."""
    open(pin, "w").close()
    child = os.fork()
    if child == 0:
        status = 1
        try:
            kernel.unshare(CLONE_NEWNET)
            kernel.link_up("lo")  # the runtime joins this namespace: it is ours to set up
            kernel.mount("/proc/self/ns/net", pin, None, MS_BIND)
            status = 0
        except BaseException:
            pass
        os._exit(status)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise NetworkError("cannot make a network namespace for the container",
                           field="--network", hint="are user namespaces allowed here?")


def build_socket_path(folder, cid, uid):
    """The API socket: beside the pin when the path fits a sockaddr_un (108 bytes with its
    NUL), else in a private folder under /tmp."""
    path = os.path.join(folder, cid[:12] + ".sock")
    if len(path) < 100:
        return path
    return os.path.join("/tmp", "capsa-slirp-%d" % uid, cid[:12] + ".sock")


def _start(folder, cid, pin):
    """slirp4netns in its own session, told the namespace by path; waits for its ready byte.
    Sandboxed (its own mount namespace, caps dropped) and under its seccomp filter, as podman
    runs it: it parses the container's packets."""
    import subprocess
    from capsa.runtime.state import read_start_time
    sock = build_socket_path(folder, cid, os.stat(folder).st_uid)
    os.makedirs(os.path.dirname(sock), mode=0o700, exist_ok=True)
    ready_r, ready_w = os.pipe()
    log = open(os.path.join(folder, cid + ".log"), "wb")
    try:
        proc = subprocess.Popen(
            [SLIRP4NETNS, "--configure", "--mtu=65520", "--disable-host-loopback",
             "--enable-sandbox", "--enable-seccomp",
             "--ready-fd=%d" % ready_w, "--api-socket", sock, "--netns-type=path", pin, "tap0"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(ready_w,),
            start_new_session=True)
    finally:
        log.close()
        os.close(ready_w)
    try:
        ready = os.read(ready_r, 1)
    finally:
        os.close(ready_r)
    record = {"pid": proc.pid, "start": read_start_time(proc.pid), "socket": sock}
    from capsa import jsonlite
    with open(os.path.join(folder, cid + ".json"), "w") as handle:
        handle.write(jsonlite.dumps(record))
    if ready != b"1":
        raise NetworkError("slirp4netns did not come up: %s" % _tail(folder, cid),
                           field="--network")
    return sock


def _tail(folder, cid):
    try:
        with open(os.path.join(folder, cid + ".log"), "rb") as handle:
            lines = handle.read().decode(errors="replace").splitlines()
        # its own complaint, not the banner of addresses it prints first
        said = [line for line in lines if not line.startswith(("*", "sent ", "received "))]
        return "; ".join(said[:3]) or "no output"
    except OSError:
        return "no log"


def _api(sock_path, request):
    import _socket
    from capsa import jsonlite
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect(sock_path)
        sock.sendall(jsonlite.dumps(request).encode())
        sock.shutdown(_socket.SHUT_WR)
        reply = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    except OSError as exc:
        raise NetworkError("cannot reach slirp4netns' API: %s" % (exc.strerror or exc),
                           field="--publish")
    finally:
        sock.close()
    answer = jsonlite.loads(reply.decode() or "{}")
    if "error" in answer:
        args = request["arguments"]
        raise NetworkError("cannot publish %s:%d: %s" % (args["host_addr"], args["host_port"],
                                                         answer["error"].get("desc", answer)),
                           field="--publish", hint="is the host port free?")


def apply_detach(store_root, cid, kernel=None):
    """Stop slirp4netns (its recorded pid only, checked by start time), unpin the namespace,
    remove the files. Idempotent."""
    from capsa.runtime.state import read_start_time
    folder = _dir(store_root)
    try:
        from capsa import jsonlite
        with open(os.path.join(folder, cid + ".json")) as handle:
            record = jsonlite.loads(handle.read())
        if record.get("socket"):
            try:
                os.unlink(record["socket"])
            except OSError:
                pass
        if record.get("pid") and read_start_time(record["pid"]) == record.get("start"):
            import select
            pidfd = os.pidfd_open(record["pid"])
            try:
                os.kill(record["pid"], 9)
                # not our child after a detached run: wait on a pidfd, which turns readable
                # when the process has exited, whoever reaps it
                select.select([pidfd], [], [], 5)
            finally:
                os.close(pidfd)
            try:
                os.waitpid(record["pid"], os.WNOHANG)
            except ChildProcessError:
                pass
    except (OSError, ValueError):
        pass
    pin = os.path.join(folder, cid)
    if kernel is None:
        from capsa.syscalls.kernel import Kernel
        kernel = Kernel()
    try:
        kernel.umount2(pin, MNT_DETACH)
    except Exception:
        pass  # not pinned (a failed attach)
    for suffix in ("", ".json", ".log", ".hosts", ".resolv"):
        try:
            os.unlink(pin + suffix)
        except OSError:
            pass
