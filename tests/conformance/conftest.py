"""The conformance tier's harness: runtimes, their claims, the observe-and-compare fixture, the clients.

Owns the list of OCI runtimes (RUNTIMES), which scenario is collected for which runtime, and the
package-scoped fixtures that give podman/buildah/ctr an isolated configuration under one scratch
folder and prove on teardown that nothing is left on the host. Of capsa it imports only the image
builder (capsa.busybox): capsa-runtime is reached as a binary, like runc.
"""
import os
import shutil
import tempfile
import time

import pytest

from capsa.busybox import build_busybox_tar
from tests.conformance import clients, traces

RUNTIMES = {
    "runc": "/usr/sbin/runc",
    "capsa-runtime": os.environ.get("CAPSA_RUNTIME", "/usr/local/bin/capsa-runtime"),
}
"""Every OCI runtime the tier knows: podman/ctr/buildah name -> binary.

REFERENCE (runc) runs every scenario. Another runtime runs a scenario only once the scenario
claims it with @pytest.mark.claimed("capsa-runtime"): that is how a scenario is declared passing
for capsa. An unclaimed scenario is not collected for that runtime at all (it is neither skipped
nor xfailed), so the test report lists exactly the claimed pairs. In a claimed pair, the test
runs the scenario under both runtimes and asserts their observations are equal.

By hand: CAPSA_CONFORMANCE_TRY=capsa-runtime collects that runtime for every selected scenario,
claimed or not; CAPSA_CONFORMANCE_ARGV_LOG=DIR wraps each runtime in a logger that appends its
argv to DIR/argv.log (see capsa_check.sh); CAPSA_RUNTIME=PATH tests another capsa-runtime binary.
"""
REFERENCE = "runc"
NAMESPACE = "capsaconf%d" % os.getpid()


def pytest_configure(config):
    config.addinivalue_line("markers", "conformance: drives a real client (podman, ctr, buildah)"
                            " against an OCI runtime; needs root and the Debian clients")
    config.addinivalue_line("markers", "claimed(*runtimes): runtimes besides runc this scenario"
                            " is declared to pass on (see tests/conformance/conftest.py RUNTIMES)")


def pytest_generate_tests(metafunc):
    if "runtime" not in metafunc.fixturenames:
        return
    names = [REFERENCE]
    for mark in metafunc.definition.iter_markers("claimed"):
        for name in mark.args:
            if name not in RUNTIMES:
                raise pytest.UsageError("%s claims unknown runtime %r; known: %s" % (
                    metafunc.definition.nodeid, name, ", ".join(RUNTIMES)))
            names.append(name)
    tried = os.environ.get("CAPSA_CONFORMANCE_TRY")
    if tried:
        if tried not in RUNTIMES:
            raise pytest.UsageError("CAPSA_CONFORMANCE_TRY=%s: not in RUNTIMES (%s)" % (
                tried, ", ".join(RUNTIMES)))
        names.append(tried)
    metafunc.parametrize("runtime", list(dict.fromkeys(names)), scope="function")


@pytest.fixture
def observe(runtime):
    """observe(scenario, *args) -> scenario(runtime, *args), the scenario's observation (a dict).

    For a runtime other than runc, the same test then runs the scenario under runc too and
    asserts both observations are equal, so the test's own expectations hold for both.
    """
    def observe(scenario, *args):
        got = scenario(runtime, *args)
        if runtime != REFERENCE:
            want = scenario(REFERENCE, *args)
            assert got == want, "%s observed %r where %s observed %r" % (
                runtime, got, REFERENCE, want)
        return got
    return observe


@pytest.fixture(scope="package")
def top():
    """The tier's scratch folder. Package scope: the leftover check runs right after the tier's
    last test, before other tiers of the same pytest run could add traces of their own."""
    if os.geteuid() != 0:
        pytest.skip("the conformance tier needs root (podman/containerd as root, cgroups)")
    missing = [b for b in ("podman", "buildah", "containerd", "ctr", "conmon") if not shutil.which(b)]
    if missing:
        pytest.skip("host lacks %s (apt-get install -y podman buildah containerd)" % " ".join(missing))
    path = tempfile.mkdtemp(prefix="capsa-conformance-", dir="/tmp")
    before = traces.read_traces(path, NAMESPACE)
    yield path
    _check_host_clean(path, before)


@pytest.fixture(scope="package")
def runtimes(top):
    """{name: binary} as the clients call them; logging wrappers under CAPSA_CONFORMANCE_ARGV_LOG."""
    logdir = os.environ.get("CAPSA_CONFORMANCE_ARGV_LOG")
    if not logdir:
        return dict(RUNTIMES)
    return {name: write_argv_logger(logdir, name, path) for name, path in RUNTIMES.items()}


def write_argv_logger(logdir, name, binary):
    """Write logdir/bin/<name>: appends its argv to logdir/argv.log, copies the JSON it is given
    (bundle config.json, --process, --resources) to logdir/captures, then execs binary."""
    os.makedirs(os.path.join(logdir, "bin"), exist_ok=True)
    os.makedirs(os.path.join(logdir, "captures"), exist_ok=True)
    path = os.path.join(logdir, "bin", name)
    with open(path, "w") as f:
        f.write("""#!/bin/sh
log=%(d)s/argv.log cap=%(d)s/captures/$$
{ printf '%%s %(n)s parent=%%s tty0=%%s argv:' "$(date +%%T.%%N)" "$(cat /proc/$PPID/comm)" \\
    "$([ -t 0 ] && echo y || echo n)"; printf ' %%s' "$@"; echo; } >> "$log"
prev=
for a in "$@"; do
  case "$prev" in
    --bundle|-b) cp "$a/config.json" "$cap-config.json" 2>/dev/null ;;
    --process|--resources|-r) cp "$a" "$cap-$(basename "$a").json" 2>/dev/null ;;
  esac
  case "$a" in --resources=*) cp "${a#--resources=}" "$cap-resources.json" 2>/dev/null ;; esac
  prev=$a
done
exec %(b)s "$@"
""" % {"d": logdir, "n": name, "b": binary})
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="package")
def podman_env(top, runtimes):
    """The environment of podman and buildah, with localhost/busybox:latest imported offline."""
    env = clients.write_podman_conf(top, runtimes)
    podman = clients.Client(["podman"], env)
    tar = build_busybox_tar(os.path.join(top, "busybox-rootfs.tar"))
    podman("import", "--change", 'CMD ["/bin/sh"]', "--change", "ENV PATH=" + clients.PATH,
           tar, clients.IMAGE)
    yield env
    podman("pod", "rm", "--all", "--force", "--time", "0", check=False)
    podman("rm", "--all", "--force", "--time", "0", check=False)
    clients.Client(["buildah"], env)("rm", "--all", check=False)
    podman("system", "reset", "--force", check=False)


@pytest.fixture(scope="package")
def podman(podman_env):
    """podman(runtime) -> Client for `podman --runtime <runtime>` (the name in [engine.runtimes])."""
    return lambda runtime: clients.Client(["podman", "--runtime", runtime], podman_env)


@pytest.fixture(scope="package")
def buildah(podman_env):
    """Client for buildah on podman's storage; `build --runtime runtimes[name]` picks the runtime."""
    return clients.Client(["buildah"], podman_env)


@pytest.fixture(scope="package")
def containerd(top, podman_env):
    """A containerd of our own on a private socket, namespace NAMESPACE, busybox imported."""
    proc, sock = clients.start_containerd(top)
    ctr = clients.Client(["ctr", "--address", sock, "--namespace", NAMESPACE], os.environ)
    archive = os.path.join(top, "busybox-docker.tar")
    try:
        clients.Client(["podman"], podman_env)(
            "save", "--format", "docker-archive", "-o", archive, clients.IMAGE)
        ctr("images", "import", archive)
        yield ctr
    finally:
        _remove_ctr_objects(ctr)
        clients.stop_containerd(proc)


def _remove_ctr_objects(ctr):
    for task in ctr("tasks", "ls", "--quiet", check=False).stdout.split():
        ctr("tasks", "delete", "--force", task, check=False)
    for container in ctr("containers", "ls", "--quiet", check=False).stdout.split():
        ctr("containers", "delete", container, check=False)
    for image in ctr("images", "ls", "--quiet", check=False).stdout.split():
        ctr("images", "remove", "--sync", image, check=False)
    ctr("namespaces", "remove", NAMESPACE, check=False)


@pytest.fixture(scope="package")
def ctr(containerd, runtimes, top):
    """ctr(runtime) -> CtrFor: .client (ctr on our socket and namespace), .run (the `ctr run`
    flags that select the runtime binary and its root), .fifo (the flags every command that
    opens a process needs, so its IO fifos stay in the scratch folder).

    Each runtime keeps its state under its own --runc-root inside the scratch folder; the flags
    are stored with the container, so later `ctr task …` calls reuse the binary and root.
    """
    fifo = ["--fifo-dir", os.path.join(top, "ctr-fifo")]

    def ctr(runtime):
        root = os.path.join(top, "ctr-roots", runtime)
        return CtrFor(containerd, ["--runc-binary", runtimes[runtime], "--runc-root", root] + fifo,
                      fifo)
    return ctr


class CtrFor:
    __slots__ = ("client", "run", "fifo")

    def __init__(self, client, run, fifo):
        self.client, self.run, self.fifo = client, run, fifo


def _check_host_clean(top, before, patience=10):
    # conmon and the shims exit, and remove their sockets, after the client command returned:
    # give them `patience` seconds
    deadline = time.monotonic() + patience
    while True:
        after = traces.read_traces(top, NAMESPACE)
        parents = {c for c in after["cgroups"] - before["cgroups"] if _is_client_cgroup(c)}
        traces.remove_empty_cgroups(parents)
        traces.remove_client_paths(after["client_paths"] - before["client_paths"])
        after = traces.read_traces(top, NAMESPACE)
        left = {kind: sorted(after[kind] - before[kind]) for kind in after}
        left = {kind: items for kind, items in left.items() if items}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not left.get("mounts"):
        shutil.rmtree(top, ignore_errors=True)
    assert not left, "the conformance tier left traces on the host: %r" % left


def _is_client_cgroup(path):
    """The cgroups the clients themselves leave: podman's cgroupfs parent, conmon's cgroup and
    the pods' (libpod_parent/<pod id>, which podman removes from the v1 controllers only), and
    containerd's namespace. A container's own cgroup (libpod-<id>, <namespace>/<id>,
    buildah-…) left behind is the runtime's fault, and the check reports it."""
    parent, name = os.path.split(path)
    if name in ("libpod_parent", NAMESPACE):
        return True
    return os.path.basename(parent) == "libpod_parent" and not name.startswith("libpod-")
