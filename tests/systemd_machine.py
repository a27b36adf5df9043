"""Test helper: a throwaway machine where systemd is PID 1, for the systemd cgroup driver's tests.

Owns one cgroup `capsa-sdtest-<random>` per hierarchy, the namespaces under it and its work
folder; removes all of them at shutdown. Used by tests only: imports no pytest and nothing of capsa.
"""
import errno
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

SYSTEMD = "/lib/systemd/systemd"
CGROUP_ROOT = "/sys/fs/cgroup"
UNIT = "capsa-test.target"
TOOLS = ("unshare", "nsenter", "setpriv", "pivot_root", "mount", "umount", "systemctl")
RUN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
           "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}

# Moves the shell into every cgroup.procs named before "--", then execs the rest: the only way
# to be in the machine's cgroups before unshare/nsenter runs (a cgroup namespace is rooted at
# the cgroups its creator is in; joining one from outside shows "/.." paths).
JOIN_CGROUPS = ('for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; '
                'shift; done; shift; exec "$@"')


class MachineError(RuntimeError):
    """The machine did not boot, a command failed under check=True, or shutdown left something."""


class MachineCommandError(subprocess.CalledProcessError, MachineError):
    def __str__(self):
        return "%s\nstdout:\n%s\nstderr:\n%s" % (subprocess.CalledProcessError.__str__(self),
                                                 self.stdout, self.stderr)


def read_cgroup_layout(mountinfo="/proc/self/mountinfo", root=CGROUP_ROOT):
    """The host's cgroup mounts: {"v2": True} for a pure cgroup2 host, else
    {"v2": False, "mounts": {dir name: (fstype, mount options)}, "links": {name: target}}."""
    controllers = set()
    with open("/proc/cgroups") as f:
        for line in f:
            if not line.startswith("#"):
                controllers.add(line.split()[0])
    mounts = {}
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point, fstype, superopts = fields[4], fields[sep + 1], fields[sep + 3].split(",")
            if fstype == "cgroup2" and point == root:
                return {"v2": True}
            if fstype not in ("cgroup", "cgroup2") or os.path.dirname(point) != root:
                continue
            opts = [o for o in superopts if o in controllers or o.startswith("name=")]
            if fstype == "cgroup" and not any(o in controllers for o in opts):
                opts.insert(0, "none")  # a named hierarchy without controllers
            mounts[os.path.basename(point)] = (fstype, ",".join(opts))
    links = {}
    if os.path.isdir(root):
        for entry in os.listdir(root):
            if os.path.islink(os.path.join(root, entry)):
                links[entry] = os.readlink(os.path.join(root, entry))
    return {"v2": False, "mounts": mounts, "links": links}


def build_boot_script(workdir, layout, binds, pidfile):
    """The shell script run by `unshare` as the machine's future PID 1; it ends in systemd."""
    root = os.path.join(workdir, "root")
    upper = os.path.join(workdir, "upper")
    steps = [
        # /proc is still the host's procfs here, so /proc/self/stat holds the host pid
        "read -r hostpid rest < /proc/self/stat",
        'echo "$hostpid" > %s' % shlex.quote(pidfile),
        ["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", upper],
        ["mkdir", upper + "/u", upper + "/w"],
        # the overlay shows only the root filesystem, not host mounts below it (/tmp may be one)
        ["mount", "-t", "overlay", "-o",
         "lowerdir=/,upperdir=%s/u,workdir=%s/w" % (upper, upper), "overlay", root],
        ["mount", "-t", "proc", "proc", root + "/proc"],
        ["mount", "-t", "sysfs", "sysfs", root + "/sys"],
        ["mount", "--rbind", "/dev", root + "/dev"],
    ]
    cgroot = root + CGROUP_ROOT
    if layout["v2"]:
        steps.append(["mount", "-t", "cgroup2", "cgroup2", cgroot])
    else:
        steps.append(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", cgroot])
        for name, (fstype, opts) in sorted(layout["mounts"].items()):
            steps.append(["mkdir", "-p", cgroot + "/" + name])
            mount = ["mount", "-t", fstype] + (["-o", opts] if fstype == "cgroup" else [])
            steps.append(mount + [fstype, cgroot + "/" + name])
        for name, target in sorted(layout["links"].items()):
            steps.append(["ln", "-s", target, cgroot + "/" + name])
    steps += [
        ["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", root + "/run"],
        ["mount", "-t", "tmpfs", "tmpfs", root + "/tmp"],
    ]
    for bind in binds:
        steps += [["mkdir", "-p", root + bind], ["mount", "--rbind", bind, root + bind]]
    steps += [
        ["mkdir", "-p", root + "/etc/systemd/system"],
        ["cp", os.path.join(workdir, UNIT), root + "/etc/systemd/system/" + UNIT],
        ["hostname", "capsa-sd"],
        ["cd", root],
        # pivot_root, not chroot: a runtime's exec joins the container's mount namespace at
        # that namespace's root, which a chroot leaves at the host's / (runc lands there too)
        ["mkdir", "-p", ".oldroot"],
        ["pivot_root", ".", ".oldroot"],
        ["umount", "-l", "/.oldroot"],
        ["cd", "/"],
        # container= makes systemd log to stderr and skip what only a real boot does
        ["exec", "/usr/bin/env", "-i", "container=capsa-test", SYSTEMD,
         "--unit=" + UNIT, "--log-target=console", "--log-level=info"],
    ]
    lines = ["set -e"] + [s if isinstance(s, str) else shlex.join(s) for s in steps]
    return "\n".join(lines) + "\n"


def _remove_tree(top, deadline):
    """rmdir a cgroup tree depth-first, retrying while dying cgroups drain; return what is left."""
    while True:
        left = []
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
                left.append(dirpath)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _is_machine_name(name):
    suffix = name[len("capsa-sdtest-"):]
    return (name.startswith("capsa-sdtest-") and len(suffix) == 8
            and all(c in "0123456789abcdef" for c in suffix))


def sweep_leftovers(layout, min_age=60):
    """Remove the cgroups of machines whose test process was SIGKILLed (unshare's pdeathsig
    killed the machine, nobody ran shutdown). Only names of this helper's format, only when no
    process is left anywhere in their trees, only when older than min_age seconds (a machine
    still booting is empty for a moment). Returns the names removed."""
    tops = [CGROUP_ROOT] if layout["v2"] else [
        os.path.join(CGROUP_ROOT, d) for d in sorted(layout["mounts"])]
    names = set()
    for top in tops:
        names.update(n for n in os.listdir(top) if _is_machine_name(n))
    removed = []
    now = time.time()
    for name in sorted(names):
        trees = [os.path.join(top, name) for top in tops if os.path.isdir(os.path.join(top, name))]
        try:
            if any(now - os.stat(t).st_mtime < min_age for t in trees):
                continue
            populated = False
            for tree in trees:
                for dirpath, _dirs, _files in os.walk(tree):
                    with open(os.path.join(dirpath, "cgroup.procs")) as f:
                        populated = populated or bool(f.read().strip())
        except FileNotFoundError:
            continue  # another sweep or shutdown got there first
        if not populated:
            for tree in trees:
                _remove_tree(tree, time.monotonic())
            removed.append(name)
    return removed


class SystemdMachine:
    """A machine booted from an overlay of / with systemd as PID 1 in new cgroup, mount, pid,
    uts, ipc and network namespaces (only lo in it). `workdir` must be empty or absent: the
    machine removes it at shutdown. `binds` are host folders seen at the same path inside."""

    def __init__(self, workdir, binds=()):
        self.workdir = os.path.abspath(str(workdir))
        if os.path.exists(self.workdir) and os.listdir(self.workdir):
            raise ValueError("SystemdMachine workdir %s is not empty: give it a fresh folder, "
                             "it is removed at shutdown" % self.workdir)
        self.binds = tuple(os.path.abspath(str(b)) for b in binds)
        for bind in self.binds:
            inside = (self.workdir + "/").startswith(bind.rstrip("/") + "/")
            if inside or (bind + "/").startswith(self.workdir + "/"):
                raise ValueError("SystemdMachine bind %s overlaps the workdir %s: bind a "
                                 "sibling folder" % (bind, self.workdir))
        self.name = "capsa-sdtest-" + secrets.token_hex(4)
        self.layout = None
        self.pid = None
        self._pidfd = None
        self._proc = None
        self._console = None
        self._created = []
        self._done = False

    # -- host facts ---------------------------------------------------------------------------

    @staticmethod
    def missing():
        """None when this host can boot a machine, else a one-line reason naming what it lacks."""
        if os.geteuid() != 0:
            return "not root: the systemd test machine needs root for cgroups, mounts, namespaces"
        if not os.access(SYSTEMD, os.X_OK):
            return "no %s (Debian package systemd)" % SYSTEMD
        for tool in TOOLS:
            if shutil.which(tool) is None:
                return "no %s on PATH (util-linux/systemd)" % tool
        if not hasattr(os, "pidfd_open"):
            return "no os.pidfd_open (needs Python 3.9+ on Linux 5.3+)"
        try:
            with open("/proc/filesystems") as f:
                if "\toverlay\n" not in f.read():
                    return "no overlayfs in /proc/filesystems (modprobe overlay)"
        except OSError:
            return "no /proc/filesystems"
        layout = read_cgroup_layout()
        if not layout["v2"] and "systemd" not in layout["mounts"]:
            return ("no cgroup hierarchies as expected: need cgroup2 at %s, or v1 with "
                    "name=systemd at %s/systemd" % (CGROUP_ROOT, CGROUP_ROOT))
        return None

    # -- paths ---------------------------------------------------------------------------------

    def cgroup_dir(self, controller):
        """Host path of the machine's cgroup in the hierarchy of `controller` ("memory",
        "systemd" or "name=systemd", "unified", ...)."""
        layout = self.layout or read_cgroup_layout()
        if layout["v2"]:
            return os.path.join(CGROUP_ROOT, self.name)
        key = controller[len("name="):] if controller.startswith("name=") else controller
        if key in layout["mounts"] or key in layout["links"]:
            return os.path.join(CGROUP_ROOT, key, self.name)
        for dirname, (_fstype, opts) in layout["mounts"].items():
            if controller in opts.split(","):
                return os.path.join(CGROUP_ROOT, dirname, self.name)
        raise MachineError("no cgroup hierarchy for %r on this host (have %s)"
                           % (controller, ", ".join(sorted(layout["mounts"]))))

    def cgroup_dirs(self):
        """Host paths of the machine's cgroup in every hierarchy it has one in."""
        layout = self.layout or read_cgroup_layout()
        if layout["v2"]:
            return [os.path.join(CGROUP_ROOT, self.name)]
        return [os.path.join(CGROUP_ROOT, d, self.name) for d in sorted(layout["mounts"])]

    def path(self, inside_path):
        """Host path of `inside_path` (absolute, inside the machine)."""
        if self.pid is None:
            raise MachineError("the machine is not running")
        if not inside_path.startswith("/"):
            raise ValueError("machine path %r must be absolute" % inside_path)
        return "/proc/%d/root%s" % (self.pid, inside_path)

    def log(self):
        """systemd's console output so far (and the boot script's errors)."""
        try:
            with open(os.path.join(self.workdir, "console.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _join_targets(self):
        # cgroup v2 refuses processes in a cgroup that has controllers enabled for its children
        # ("no internal processes"); systemd enables them in its root, so join init.scope there
        if self.layout["v2"]:
            return [os.path.join(CGROUP_ROOT, self.name, "init.scope", "cgroup.procs")]
        return [os.path.join(d, "cgroup.procs") for d in self.cgroup_dirs()]

    # -- life cycle ----------------------------------------------------------------------------

    def boot(self, timeout=10):
        """Start the machine and wait until systemd answers `systemctl is-system-running`."""
        if self._proc is not None or self._done:
            raise MachineError("SystemdMachine.boot: a machine boots once; make a new one")
        self.layout = read_cgroup_layout()
        sweep_leftovers(self.layout)
        try:
            self._start()
            self._wait(timeout)
        except BaseException as failure:
            try:
                self.shutdown()
            except MachineError as cleanup:
                # keep the cleanup error next to the boot failure
                raise MachineError("%s\nand then: %s" % (failure, cleanup)) from failure
            raise
        return self

    def _start(self):
        os.makedirs(self.workdir, exist_ok=True)
        for sub in ("root", "upper"):
            os.mkdir(os.path.join(self.workdir, sub))
        with open(os.path.join(self.workdir, UNIT), "w") as f:
            f.write("[Unit]\nDescription=capsa test machine\nDefaultDependencies=no\n")
        pidfile = os.path.join(self.workdir, "pid")
        script = os.path.join(self.workdir, "boot.sh")
        with open(script, "w") as f:
            f.write(build_boot_script(self.workdir, self.layout, self.binds, pidfile))
        for d in self.cgroup_dirs():
            os.mkdir(d)
            self._created.append(d)
            hierarchy = self.layout.get("mounts", {}).get(os.path.basename(os.path.dirname(d)))
            if hierarchy and hierarchy[0] == "cgroup" and "cpuset" in hierarchy[1].split(","):
                # cgroup v1 cpuset: a new cgroup starts with no cpus/mems and refuses tasks
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    with open(os.path.join(os.path.dirname(d), knob)) as src:
                        value = src.read().strip()
                    with open(os.path.join(d, knob), "w") as dst:
                        dst.write(value)
        # pdeathsig + --kill-child: if the test process dies hard, unshare and then systemd
        # (PID 1 of the new pid namespace, so all of it) die too. --net: systemd's start-up
        # brings lo up and raises net.unix.max_dgram_qlen in its network namespace; keep that
        # off the host's (fs.file-max, which it also raises, has no namespace)
        argv = ["/bin/sh", "-c", JOIN_CGROUPS, "sh"]
        argv += [os.path.join(d, "cgroup.procs") for d in self.cgroup_dirs()] + ["--"]
        argv += ["setpriv", "--pdeathsig", "KILL", "unshare", "--cgroup", "--mount", "--pid",
                 "--fork", "--uts", "--ipc", "--net", "--propagation", "private",
                 "--kill-child=SIGKILL", "/bin/sh", script]
        self._console = open(os.path.join(self.workdir, "console.log"), "wb")
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._console,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      env=RUN_ENV)

    def _wait(self, timeout):
        deadline = time.monotonic() + timeout
        pidfile = os.path.join(self.workdir, "pid")
        state = "no answer"
        while True:
            if self._proc.poll() is not None:
                raise MachineError("the test machine exited (status %s) before systemd "
                                   "answered; its log:\n%s" % (self._proc.returncode, self.log()))
            if self.pid is None:
                self._find_pid(pidfile)
            if self.pid is not None and os.path.exists(self.path("/run/systemd/private")):
                remaining = max(1.0, deadline - time.monotonic())
                try:
                    answer = self.run(["systemctl", "is-system-running"], timeout=remaining)
                except subprocess.TimeoutExpired:
                    state = "no answer within %.1fs" % remaining
                else:
                    state = answer.stdout.strip() or answer.stderr.strip() or "no answer"
                    if state in ("running", "degraded"):
                        return
            if time.monotonic() > deadline:
                raise MachineError("systemd in the test machine did not come up within %ss "
                                   "(`systemctl is-system-running`: %s); its log:\n%s"
                                   % (timeout, state, self.log()))
            time.sleep(0.02)

    def _find_pid(self, pidfile):
        try:
            with open(pidfile) as f:
                text = f.read()
        except FileNotFoundError:
            return
        if not text.endswith("\n"):
            return
        pid = int(text)
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return  # the boot script failed and was reaped: _wait reports unshare's exit
        # the pidfd pins this pid; check it is unshare's child (PID 1 of its namespace)
        try:
            with open("/proc/%d/status" % pid) as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except FileNotFoundError:
            os.close(fd)
            return
        if int(status["PPid"]) != self._proc.pid or status["NSpid"].split()[-1] != "1":
            os.close(fd)
            raise MachineError("pid %d from %s is not the machine's PID 1" % (pid, pidfile))
        self.pid, self._pidfd = pid, fd

    def run(self, argv, input=None, timeout=60, check=False, env=None):
        """Run argv inside the machine (all its namespaces, its root, in its cgroups) and return
        the CompletedProcess (text). check=True raises MachineCommandError on a non-zero exit."""
        if self.pid is None:
            raise MachineError("the machine is not running")
        args = ["/bin/sh", "-c", JOIN_CGROUPS, "sh"] + self._join_targets() + ["--"]
        args += ["nsenter", "-t", str(self.pid), "-a", "-r", "-w"] + [str(a) for a in argv]
        # files, not pipes: a detached container inherits stdout/stderr and keeps them open
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.run(args, input=None if input is None else input.encode(),
                                  stdin=subprocess.DEVNULL if input is None else None,
                                  stdout=out, stderr=err, timeout=timeout,
                                  env=RUN_ENV if env is None else env)
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(list(argv), proc.returncode,
                                                 out.read().decode(errors="replace"),
                                                 err.read().decode(errors="replace"))
        if check and result.returncode != 0:
            raise MachineCommandError(result.returncode, result.args, result.stdout,
                                      result.stderr)
        return result

    def shutdown(self, timeout=10):
        """Kill systemd (its pid namespace dies with it), remove the machine's cgroups and the
        workdir. Idempotent; raises MachineError naming whatever could not be removed."""
        if self._done:
            return
        problems = []
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(self._pidfd)
            self._pidfd = None
        if self._proc is not None:
            if self.pid is None and self._proc.poll() is None:
                # systemd never reported: unshare's --kill-child takes the namespace down
                self._proc.kill()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                problems.append("unshare pid %d did not exit" % self._proc.pid)
        if self._console is not None:
            self._console.close()
            self._console = None
        deadline = time.monotonic() + timeout
        for d in self._created:
            left = _remove_tree(d, deadline)
            if left:
                problems.append("cgroups still busy: " + " ".join(left))
        if not problems:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.pid = None
        self._done = True
        if problems:
            raise MachineError("SystemdMachine.shutdown left: " + "; ".join(problems))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False
