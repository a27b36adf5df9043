"""The container process's own settings and its exec: rlimits, OOM score, I/O priority, scheduler,
CPU affinity, personality, executable lookup, the cwd check and the fd sweep before execve.

Effectful through the kernel object only; must not import launch or command modules.
"""
import os

from capsa.errors import ConfigError, KernelError

CLOSE_RANGE_CLOEXEC = 1 << 2
IOPRIO_WHO_PROCESS = 1


def apply_rlimits(kernel, process, field="process.rlimits"):
    for index, (resource, soft, hard, name) in enumerate(process["rlimits"]):
        try:
            kernel.prlimit(0, resource, soft, hard)
        except KernelError as err:
            current = kernel.getrlimit(resource)
            if err.errno == 1 and hard > current[1]:
                # root here may lack CAP_SYS_RESOURCE: a hard limit can then only go down.
                raise ConfigError(
                    "cannot set %s to soft %d hard %d: the hard limit is %d and the runtime "
                    "lacks CAP_SYS_RESOURCE to raise it" % (name, soft, hard, current[1]),
                    field="%s[%d]" % (field, index), hint="ask for at most %d" % current[1])
            raise ConfigError("cannot set %s to soft %d hard %d: %s" % (name, soft, hard,
                                                                      err.message),
                              field="%s[%d]" % (field, index))


def apply_process_attributes(kernel, process, proc_self, field="process"):
    """OOM score, I/O priority, scheduler and initial affinity, before the uid switch."""
    if process.get("oom_score_adj") is not None:
        kernel.write_file("oom_score_adj", str(process["oom_score_adj"]), dirfd=proc_self)
    if process.get("io_priority") is not None:
        try:
            kernel.ioprio_set(IOPRIO_WHO_PROCESS, 0, process["io_priority"])
        except KernelError as err:
            raise ConfigError("cannot set I/O priority: " + err.message, field=field + ".ioPriority")
    if process.get("scheduler"):
        try:
            kernel.sched_setattr(0, *process["scheduler"])
        except KernelError as err:
            raise ConfigError("cannot set the scheduler: " + err.message, field=field + ".scheduler")
    affinity = process.get("cpu_affinity")
    if affinity and affinity.get("initial"):
        kernel.sched_setaffinity(0, affinity["initial"])


def apply_final_affinity(kernel, process):
    affinity = process.get("cpu_affinity")
    if affinity and affinity.get("final"):
        kernel.sched_setaffinity(0, affinity["final"])


def apply_personality(kernel, persona):
    if persona is not None:
        kernel.personality(persona)


def read_env_path(env):
    for item in env:
        if item.startswith("PATH="):
            return item[5:]
    return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def find_executable(args0, env, field="process.args"):
    """Resolve args[0] inside the (already entered) container root, as execvp would."""
    if "/" in args0:
        candidates = [args0]
    else:
        candidates = [os.path.join(directory or ".", args0)
                      for directory in read_env_path(env).split(":")]
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if (st.st_mode & 0o170000) == 0o100000 and st.st_mode & 0o111:
            return candidate
        if "/" in args0:
            raise ConfigError("%s is not an executable file" % args0, field=field + "[0]")
    if "/" in args0:
        raise ConfigError("%s: no such file in the container" % args0, field=field + "[0]")
    raise ConfigError("%s: executable file not found in $PATH" % args0, field=field + "[0]")


def check_interpreters(kernel, executable, field="process.args"):
    """Refuse a program whose #! interpreter chain reaches a magic link such as /proc/self/exe:
    the kernel would resolve it to this runtime's own interpreter on the host and run it inside
    the container, the first step of CVE-2019-5736. Runs in the container's root."""
    path = os.path.join(kernel.getcwd(), executable)
    root = kernel.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        _check_chain(kernel, root, executable, path, field)
    finally:
        kernel.close(root)


def _check_chain(kernel, root, executable, path, field):
    from capsa.errors import KernelError
    from capsa.syscalls.fs import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS
    for _ in range(5):  # the kernel follows at most 4 levels of interpreters (BINPRM_MAX_RECURSION)
        try:
            fd = kernel.openat2(root, path.lstrip("/") or ".", os.O_RDONLY, 0,
                                RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        except KernelError as err:
            if err.errno == 40:  # ELOOP: a magic link on the way
                raise ConfigError("%s is run through a /proc magic link (%s), which would run the "
                                  "runtime's own binary inside the container" % (executable, path),
                                  field=field + "[0]", hint="point #! at a real interpreter")
            return
        try:
            head = os.read(fd, 256)
        finally:
            kernel.close(fd)
        if not head.startswith(b"#!"):
            return
        line = head[2:].split(b"\n", 1)[0].strip()
        if not line:
            return
        path = os.fsdecode(line.split()[0])


def apply_cwd(kernel, cwd, field="process.cwd", create=False):
    """chdir (creating a missing cwd inside the root first, as runc does for the init), then
    prove the cwd is inside the container root (CVE-2024-21626)."""
    try:
        kernel.chdir(cwd)
    except KernelError as err:
        if not (create and err.errno == 2):
            raise ConfigError("cannot enter working directory %s: %s" % (cwd, err.message),
                              field=field)
        from capsa.runtime.apply.paths import make_in_root
        root = kernel.open("/", os.O_PATH | os.O_DIRECTORY)
        try:
            made, _ = make_in_root(kernel, root, cwd, True, 0o755)
            kernel.close(made)
        except KernelError as err:
            raise ConfigError("cannot create working directory %s: %s" % (cwd, err.message),
                              field=field)
        finally:
            kernel.close(root)
        try:
            kernel.chdir(cwd)
        except KernelError as err:
            raise ConfigError("cannot enter working directory %s: %s" % (cwd, err.message),
                              field=field)
    try:
        where = kernel.getcwd()
    except KernelError:
        where = None
    if not where or not where.startswith("/"):
        raise ConfigError("working directory %s is outside the container" % cwd, field=field)


def apply_fd_sweep(kernel, preserve_fds):
    """Mark every fd above stdio and the preserved ones close-on-exec (CVE-2024-21626)."""
    first = 3 + preserve_fds
    kernel.close_range(first, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC)
    for fd in range(3, first):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass


def apply_exec(kernel, path, process):
    apply_default_signals()
    kernel.execve(path, process["args"], build_env_dict(process["env"]))


def apply_execveat(kernel, fd, process):
    """Run a program through an fd opened on the host before pivot_root (execveat with
    AT_EMPTY_PATH): minimal_containers' `init=@/path`."""
    apply_default_signals()
    if os.pread(fd, 2, 0) == b"#!":
        # a script: its interpreter opens it as /dev/fd/N, so this one fd must survive exec
        os.set_inheritable(fd, True)
    env = ["%s=%s" % item for item in build_env_dict(process["env"]).items()]
    kernel.execveat(fd, "", process["args"], env, 0x1000)


def apply_default_signals():
    """Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across execve:
    the container's process must start with every disposition at default and nothing blocked."""
    import _signal
    for signum in range(1, _signal.NSIG):
        if signum in (9, 19, 32, 33):  # SIGKILL, SIGSTOP, and glibc's reserved real-time pair
            continue
        try:
            _signal.signal(signum, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())


def build_env_dict(env):
    """OCI "NAME=value" strings -> a mapping for execve (a later NAME wins, as in a shell)."""
    result = {}
    for item in env:
        key, _, value = item.partition("=")
        result[key] = value
    return result
