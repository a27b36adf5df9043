"""The real clients (podman, buildah, containerd's ctr) as the conformance tier drives them.

Owns their isolated configuration under one scratch folder, the containerd daemon's life, and
running a client under a real pty. Imports nothing from capsa's runtime: the tier sees
capsa-runtime only as a binary, as podman and containerd do.
"""
import os
import re
import shlex
import subprocess
import time

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE = "localhost/busybox:latest"


# What a terminal looks like from inside, then a typed line. ctr sizes the console only after
# the task started (on a 0x0 terminal busybox `stty size` prints nothing and exits 0): wait up
# to 3 s for a size. containerd's shim can drop a tty's last output when the process exits at
# once (containerd#3738, #4107): linger 0.3 s before exiting.
TTY_PROBE = 'echo TTY=$(tty); i=0; while [ -z "$(stty size 2>/dev/null)" ] && [ $i -lt 30 ]; ' \
            'do sleep 0.1; i=$((i+1)); done; echo SIZE=$(stty size); echo READY; read line; ' \
            'echo GOT=$line; sleep 0.3; exit 3'


def read_tty_probe(rc, output):
    """Reduce a TTY_PROBE run to its facts; the pty number and echoes do not matter."""
    def field(key):
        found = re.findall(r"^%s=(.*)$" % key, output, re.M)
        return found[-1] if found else None
    return {"rc": rc, "tty": re.sub(r"\d+$", "N", field("TTY") or ""), "size": field("SIZE"),
            "got": field("GOT")}


_serial = iter(range(1, 1 << 30))


def unique(label):
    """A container/pod/image name no other scenario run of this session uses."""
    return "%s-%d-%d" % (label, os.getpid(), next(_serial))


def wait_for(probe, timeout=20, what="condition"):
    """Poll probe() every 50 ms until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ClientError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(0.05)


def read_survivors(pids, patience=5):
    """Those of pids still alive (zombies included) after up to `patience` seconds: killed
    processes are reaped by their parent (conmon, a shim) a moment after the client returned."""
    deadline = time.monotonic() + patience
    while True:
        alive = [pid for pid in pids if os.path.exists("/proc/%d" % pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


class ClientError(AssertionError):
    """A client command failed or hung; the message carries its argv and output."""


def write_podman_conf(top, runtimes):
    """Write isolated containers.conf/storage.conf/registries.conf under top/podman.

    runtimes: {name: binary path}; every name is registered in [engine.runtimes] and listed in
    runtime_supports_json (conmon passes --log/--log-format=json only to listed names).
    Returns the environment podman and buildah must run with.
    """
    conf = os.path.join(top, "podman")
    tmp = os.path.join(conf, "vartmp")
    os.makedirs(tmp, exist_ok=True)
    # No CAP_SYS_RESOURCE on the CI host: podman's default RLIMIT_NOFILE/NPROC of 1048576
    # cannot be set (runc: "error setting rlimit type 7"); stay within our hard limits
    nofile = min(20000, _hard_limit("RLIMIT_NOFILE"))
    nproc = min(32768, _hard_limit("RLIMIT_NPROC"))
    ulimits = '"nofile=%d:%d", "nproc=%d:%d"' % (nofile, nofile, nproc, nproc)
    names = ["crun", "runc", "kata", "runsc", "krun"] + [n for n in runtimes if n != "runc"]
    table = "".join('"%s" = ["%s"]\n' % (name, path) for name, path in runtimes.items())
    files = {
        "storage.conf": '[storage]\ndriver = "overlay"\ngraphroot = "%s/storage"\n'
                        'runroot = "%s/runroot"\n' % (conf, conf),
        "registries.conf": "unqualified-search-registries = []\n",
        "containers.conf": (
            '[containers]\nlog_driver = "k8s-file"\nnetns = "none"\ndefault_ulimits = [%s]\n'
            '[network]\nnetwork_backend = "netavark"\nnetwork_config_dir = "%s/networks"\n'
            '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            'events_logfile_path = "%s/events.log"\ntmp_dir = "%s/libpod-tmp"\n'
            'runtime = "runc"\nruntime_supports_json = [%s]\n[engine.runtimes]\n%s'
            % (ulimits, conf, conf, conf, ", ".join('"%s"' % n for n in names), table)),
    }
    for name, text in files.items():
        with open(os.path.join(conf, name), "w") as f:
            f.write(text)
    env = dict(os.environ)
    env.update(CONTAINERS_CONF=os.path.join(conf, "containers.conf"),
               CONTAINERS_STORAGE_CONF=os.path.join(conf, "storage.conf"),
               CONTAINERS_REGISTRIES_CONF=os.path.join(conf, "registries.conf"),
               TMPDIR=tmp)
    return env


def _hard_limit(name):
    import resource
    hard = resource.getrlimit(getattr(resource, name))[1]
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


def write_containerd_conf(top):
    """Write top/containerd/config.toml: private root, state and sockets, no CRI plugin."""
    d = os.path.join(top, "containerd")
    os.makedirs(d, exist_ok=True)
    text = ('version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            '[grpc]\n  address = "{d}/containerd.sock"\n'
            '[ttrpc]\n  address = "{d}/containerd.sock.ttrpc"\n'
            '[debug]\n  address = "{d}/debug.sock"\n  level = "info"\n'
            '[metrics]\n  address = ""\n').format(d=d)
    path = os.path.join(d, "config.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def start_containerd(top):
    """Start containerd on top/containerd/containerd.sock; returns (Popen, socket path)."""
    config = write_containerd_conf(top)
    d = os.path.dirname(config)
    sock = os.path.join(d, "containerd.sock")
    log = open(os.path.join(d, "containerd.log"), "wb")
    proc = subprocess.Popen(["containerd", "--config", config], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClientError("containerd exited %s; see %s/containerd.log" % (proc.returncode, d))
        ready = subprocess.run(["ctr", "--address", sock, "version"], capture_output=True)
        if ready.returncode == 0:
            return proc, sock
        time.sleep(0.1)
    stop_containerd(proc)
    raise ClientError("containerd did not answer on %s within 30 s" % sock)


def stop_containerd(proc):
    """SIGTERM the daemon we started (by its pid only), SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Client:
    """One client binary with a fixed environment and leading arguments."""

    def __init__(self, argv, env, timeout=90):
        self.argv = list(argv)
        self.env = env
        self.timeout = timeout

    def __call__(self, *args, check=True, input=None, timeout=None):
        """Run the client; returns CompletedProcess (text). check: raise ClientError if rc != 0."""
        argv = self.argv + [str(a) for a in args]
        try:
            done = subprocess.run(argv, env=self.env, capture_output=True, text=True, input=input,
                                  stdin=None if input is not None else subprocess.DEVNULL,
                                  timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired as e:
            raise ClientError("hung for %ss: %s\n%s" % (e.timeout, shlex.join(argv),
                                                        _text(e.stderr))) from None
        if check and done.returncode != 0:
            raise ClientError("exit %d: %s\nstdout: %s\nstderr: %s" % (
                done.returncode, shlex.join(argv), done.stdout, done.stderr))
        return done

    def out(self, *args, **kw):
        """Run the client and return its stdout with the trailing newline stripped."""
        return self(*args, **kw).stdout.rstrip("\n")

    def pty(self, *args, **kw):
        """Run the client under a new pty; see run_in_pty."""
        return run_in_pty(self.argv + [str(a) for a in args], self.env, **kw)


def _text(data):
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def run_in_pty(argv, env, answer=None, rows=30, cols=100, timeout=60):
    """Run argv as the session leader of a new pty of rows x cols (a real terminal, like tmux).

    answer: (marker, bytes): when marker has appeared in the output, type bytes.
    Returns (exit code, output with CR removed).
    """
    import fcntl
    import pty
    import select
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def become_controlling():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=become_controlling)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every slave fd is closed
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
            if answer and answer[0].encode() in out:
                os.write(master, answer[1])
                answer = None
        else:
            proc.kill()
            proc.wait()
            raise ClientError("hung for %ss under a pty: %s\n%s" % (
                timeout, shlex.join(argv), out.decode(errors="replace")))
        rc = proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        os.close(master)
    return rc, out.decode(errors="replace").replace("\r", "")
