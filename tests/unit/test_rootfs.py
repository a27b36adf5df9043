"""Unit tests of the rootfs apply code and safe path resolution against FakeKernel (no root)."""
import errno
import os
import stat
import types

import pytest

from capsa.errors import ContainerError, KernelError
from capsa.runtime.apply import paths, rootfs
from capsa.runtime.mounts import build_rootfs_plan
from capsa.syscalls import fs
from capsa.syscalls.fake import FakeKernel

EMPTY = fs.MOVE_MOUNT_F_EMPTY_PATH | fs.MOVE_MOUNT_T_EMPTY_PATH
IN_ROOT = fs.RESOLVE_IN_ROOT | fs.RESOLVE_NO_MAGICLINKS
FACTS = {"userns": False, "no_pivot": False, "terminal": False,
         "cgroup_layout": {"mode": "v2", "v1": {}, "v2": "/sys/fs/cgroup"}, "cgroup_paths": {}}


class Tree:
    """A pretend rootfs for FakeKernel: path -> "dir" | "file" | ("link", target) | ("chr", rdev).

    Paths are as openat2 receives them ("dev/null"); missing ones fail with ENOENT, and files
    made by mkdirat/openat2(O_CREAT) appear in it, so make_in_root can be followed step by step.
    """

    def __init__(self, kernel, entries):
        self.kernel = kernel
        self.entries = dict(entries)
        kernel.failures["openat2"] = self.openat2_failure
        kernel.returns["openat2"] = self.openat2
        kernel.failures["mkdirat"] = self.create_failure
        kernel.returns["fstat"] = self.fstat
        kernel.returns["readlinkat"] = self.readlink
        kernel.returns["fstatfs_type"] = self.fstatfs_type
        self.procfs = set()  # paths that are on procfs

    def fstatfs_type(self, args):
        path = self.kernel.fd_paths.get(args[0])
        if isinstance(path, int):  # an fsmount fd: the type its fsopen asked for
            path = self.kernel.fd_paths.get(path)
            return fs.PROC_SUPER_MAGIC if path == "proc" else fs.TMPFS_MAGIC
        return fs.PROC_SUPER_MAGIC if path in self.procfs else 0xEF53

    def full(self, dirfd, name):
        base = self.kernel.fd_paths.get(dirfd, "")
        if not isinstance(base, str) or base == "." or base.startswith("/"):
            base = ""  # the root's own fd (opened by its host path)
        return "/".join(part for part in (base, name) if part and part != ".")

    def resolve(self, path, no_symlinks=False):
        parts = [p for p in path.split("/") if p and p != "."]
        done = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                done = done[:-1]  # clamped at the root, as RESOLVE_IN_ROOT does
                continue
            done.append(part)
            entry = self.entries.get("/".join(done))
            if entry is None:
                return None
            if isinstance(entry, tuple) and entry[0] == "link":
                if no_symlinks:
                    return "ELOOP"
                hops += 1
                if hops > 40:
                    return "ELOOP"
                target = entry[1]
                base = [] if target.startswith("/") else done[:-1]
                parts = base + [p for p in target.split("/") if p] + parts
                done = []
        return "/".join(done)

    def openat2_failure(self, args):
        dirfd, path, flags, _mode, resolve = args
        full = self.full(dirfd, path)
        if flags & os.O_CREAT:
            if full in self.entries:
                return errno.EEXIST
            self.entries[full] = "file"
            return None
        if path == ".":
            return None
        if resolve & fs.RESOLVE_BENEATH:
            entry = self.entries.get(full)
            return errno.ELOOP if isinstance(entry, tuple) and entry[0] == "link" else None
        found = self.resolve(full, bool(resolve & fs.RESOLVE_NO_SYMLINKS))
        if found == "ELOOP":
            return errno.ELOOP
        return None if found is not None else errno.ENOENT

    def openat2(self, args):
        dirfd, path, _flags, _mode, resolve = args
        full = self.full(dirfd, path)
        if resolve & fs.RESOLVE_IN_ROOT and self.resolve(full) not in (None, "ELOOP"):
            full = self.resolve(full)
        return self.kernel._new_fd(full or ".")

    def create_failure(self, args):
        full = self.full(args[0], args[1])
        if full in self.entries:
            return errno.EEXIST
        self.entries[full] = "dir"
        return None

    def fstat(self, args):
        path = self.kernel.fd_paths.get(args[0])
        entry = self.entries.get(self.resolve(path) if isinstance(path, str) else None, "dir")
        if isinstance(path, str) and path.startswith("/") and path not in self.entries:
            entry = "dir"  # a host path given to open_tree
        if entry == "file":
            return types.SimpleNamespace(st_mode=stat.S_IFREG | 0o644, st_rdev=0)
        if isinstance(entry, tuple) and entry[0] == "chr":
            return types.SimpleNamespace(st_mode=stat.S_IFCHR | 0o666, st_rdev=entry[1])
        return types.SimpleNamespace(st_mode=stat.S_IFDIR | 0o755, st_rdev=0)

    def readlink(self, args):
        return self.entries[self.full(args[0], args[1])][1]


def open_fds(kernel):
    closed = set(args[0] for args in kernel.calls_of("close"))
    return sorted(fd for fd in kernel.fd_paths if fd not in closed)


def rootfs_plan(spec, facts=FACTS):
    spec.setdefault("linux", {}).setdefault("namespaces", [{"type": "mount"}])
    return build_rootfs_plan(spec, "/b", facts)


def make_plan(mounts=(), **linux):
    return rootfs_plan({"root": {"path": "rootfs"}, "mounts": list(mounts), "linux": linux})


def kernel_with(entries=None):
    kernel = FakeKernel()
    Tree(kernel, entries or {"proc": "dir", "sys": "dir", "dev": "dir"})
    return kernel


def test_apply_mounts_prepares_the_root_and_closes_every_fd():
    kernel = kernel_with()
    rootfs.apply_mounts(kernel, make_plan([{"destination": "/proc", "type": "proc"}]))
    assert kernel.calls[0] == ("mount", None, "/", None, fs.MS_REC | fs.MS_PRIVATE)
    assert kernel.calls[1] == ("mount", None, "/b/rootfs", None, fs.MS_PRIVATE)
    assert kernel.calls[2] == ("mount", "/b/rootfs", "/b/rootfs", None, fs.MS_BIND | fs.MS_REC)
    assert kernel.calls[3] == ("open", "/b/rootfs", os.O_PATH | os.O_DIRECTORY)
    assert kernel.calls_of("umask") == [(0,), (0o022,)]
    assert open_fds(kernel) == []


def test_fs_mount_goes_through_fsopen_and_an_fd_of_the_destination():
    kernel = kernel_with()
    plan = make_plan([{"destination": "/dev/pts", "type": "devpts",
                       "options": ["nosuid", "newinstance", "ptmxmode=0666", "rprivate"]}])
    plan["steps"] = plan["steps"][:1]
    rootfs.apply_mounts(kernel, plan)
    fsfd = kernel.calls_of("fsopen")
    assert fsfd == [("devpts",)]
    assert kernel.calls_of("fsconfig")[0][1:] == (fs.FSCONFIG_SET_STRING, "source", "devpts")
    assert kernel.calls_of("fsconfig")[1][1:] == (fs.FSCONFIG_SET_FLAG, "newinstance")
    assert kernel.calls_of("fsconfig")[2][1:] == (fs.FSCONFIG_SET_STRING, "ptmxmode", "0666")
    assert kernel.calls_of("fsconfig")[3][1:] == (fs.FSCONFIG_CMD_CREATE,)
    (fsmount,) = kernel.calls_of("fsmount")
    assert fsmount[1] == fs.MOUNT_ATTR_NOSUID
    (move,) = kernel.calls_of("move_mount")
    assert kernel.fd_paths[move[2]] == "dev/pts" and move[1] == "" and move[3] == "" and move[4] == EMPTY
    assert kernel.fd_paths[move[0]] == fsmount[0]  # the fsmount fd, from that fs context
    assert "pts" in kernel.calls_of("mkdirat")[0]
    (prop,) = kernel.calls_of("mount_setattr")
    assert prop[0] == move[0] and prop[2] == fs.AT_EMPTY_PATH | fs.AT_RECURSIVE
    assert prop[5] == fs.MS_PRIVATE
    assert kernel.names().index("move_mount") < kernel.names().index("mount_setattr")
    assert open_fds(kernel) == []


def test_bind_mount_clones_the_source_and_sets_attrs_before_attaching():
    kernel = kernel_with()
    plan = make_plan([{"destination": "/data", "type": "bind", "source": "/host/vol",
                       "options": ["rbind", "rro", "nosuid"]}])
    plan["steps"] = plan["steps"][:1]
    rootfs.apply_mounts(kernel, plan)
    (tree,) = kernel.calls_of("open_tree")
    assert tree == (fs.AT_FDCWD, "/host/vol",
                    fs.OPEN_TREE_CLONE | fs.OPEN_TREE_CLOEXEC | fs.AT_RECURSIVE)
    setattrs = kernel.calls_of("mount_setattr")
    assert setattrs[0][2:5] == (fs.AT_EMPTY_PATH | fs.AT_RECURSIVE, fs.MOUNT_ATTR_RDONLY, 0)
    assert setattrs[1][2:5] == (fs.AT_EMPTY_PATH, fs.MOUNT_ATTR_NOSUID, 0)
    assert kernel.names().index("mount_setattr") < kernel.names().index("move_mount")
    assert open_fds(kernel) == []


def test_a_file_source_needs_a_file_destination():
    kernel = kernel_with({"etc": "dir", "etc/hosts": "dir"})
    plan = make_plan([{"destination": "/etc/hosts", "source": "/h/hosts", "options": ["bind"]}])
    plan["steps"] = plan["steps"][:1]
    kernel.returns["fstat"] = lambda args: types.SimpleNamespace(
        st_mode=stat.S_IFREG if kernel.fd_paths[args[0]] == "/h/hosts" else stat.S_IFDIR)
    with pytest.raises(ContainerError) as info:
        rootfs.apply_mounts(kernel, plan)
    assert info.value.field == "mounts[0].destination" and "is a directory" in info.value.message
    assert "move_mount" not in kernel.names() and open_fds(kernel) == []


def test_a_missing_file_destination_is_created_as_an_empty_file():
    kernel = FakeKernel()
    tree = Tree(kernel, {"etc": "dir"})
    kernel.returns["fstat"] = lambda args: types.SimpleNamespace(
        st_mode=stat.S_IFREG if kernel.fd_paths[args[0]] in ("/h/hosts", "etc/hosts")
        else stat.S_IFDIR)
    plan = make_plan([{"destination": "/etc/hosts", "source": "/h/hosts", "options": ["bind"]}])
    plan["steps"] = plan["steps"][:1]
    rootfs.apply_mounts(kernel, plan)
    assert tree.entries["etc/hosts"] == "file"
    create = [c for c in kernel.calls_of("openat2") if c[2] & os.O_CREAT][0]
    assert create[1] == "hosts" and create[2] & os.O_EXCL and create[2] & os.O_NOFOLLOW
    assert kernel.fd_paths[kernel.calls_of("move_mount")[0][2]] == "etc/hosts"


def test_proc_on_a_symlink_is_refused_before_mounting():
    kernel = kernel_with({"proc": ("link", "/tmp"), "tmp": "dir"})
    plan = make_plan([{"destination": "/proc", "type": "proc"}])
    with pytest.raises(ContainerError) as info:
        rootfs.apply_mounts(kernel, plan)
    assert info.value.field == "mounts[0].destination" and "real directory" in info.value.message
    assert "move_mount" not in kernel.names() and open_fds(kernel) == []


def test_a_failing_mount_names_the_field():
    kernel = kernel_with()
    kernel.failures["fsconfig"] = lambda args: errno.EINVAL if args[2] == "size" else None
    plan = make_plan([{"destination": "/dev", "type": "tmpfs", "options": ["size=lots"]}])
    with pytest.raises(ContainerError) as info:
        rootfs.apply_mounts(kernel, plan)
    assert info.value.field == "mounts[0]" and "cannot mount tmpfs on /dev" in info.value.line()
    assert open_fds(kernel) == []


def test_sysfs_refused_in_a_user_namespace_falls_back_to_binding_the_host_sys():
    kernel = kernel_with()
    kernel.failures["fsconfig"] = lambda args: errno.EPERM if args[1] == fs.FSCONFIG_CMD_CREATE else None
    plan = make_plan([{"destination": "/sys", "type": "sysfs", "options": ["ro", "nosuid"]}])
    plan["steps"] = plan["steps"][:1]
    rootfs.apply_mounts(kernel, plan)
    assert kernel.calls_of("open_tree")[0][1] == "/sys"
    assert kernel.calls_of("open_tree")[0][2] & fs.AT_RECURSIVE
    assert kernel.calls_of("mount_setattr")[0][3] == fs.MOUNT_ATTR_RDONLY | fs.MOUNT_ATTR_NOSUID
    assert open_fds(kernel) == []


def test_tmpcopyup_copies_the_old_contents_into_the_new_tmpfs():
    kernel = kernel_with({"etc": "dir"})
    plan = make_plan([{"destination": "/etc", "type": "tmpfs", "options": ["tmpcopyup"]}])
    plan["steps"] = plan["steps"][:1]
    rootfs.apply_mounts(kernel, plan)
    (copy,) = kernel.calls_of("copy_tree")
    assert kernel.fd_paths[copy[0]] == "etc" and kernel.fd_paths[copy[1]] == \
        kernel.calls_of("fsmount")[0][0]
    assert kernel.names().index("copy_tree") < kernel.names().index("move_mount")
    assert open_fds(kernel) == []


def test_devices_are_made_with_mknod_and_chowned():
    kernel = kernel_with()
    plan = make_plan([], devices=[{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                                   "fileMode": 0o600, "uid": 5, "gid": 6}])
    rootfs.apply_mounts(kernel, plan)
    nodes = kernel.calls_of("mknodat")
    assert [n[1] for n in nodes] == ["null", "zero", "full", "random", "urandom", "tty", "fuse"]
    assert nodes[0][2:] == (stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert nodes[6][2:] == (stat.S_IFCHR | 0o600, os.makedev(10, 229))
    assert kernel.calls_of("fchownat")[6][1:] == ("fuse", 5, 6)
    links = [(c[0], c[2]) for c in kernel.calls_of("symlinkat")]
    assert ("/proc/self/fd", "fd") in links and ("pts/ptmx", "ptmx") in links
    assert ("ptmx",) == tuple(c[1] for c in kernel.calls_of("unlinkat") if c[1] == "ptmx")
    assert open_fds(kernel) == []


def test_devices_in_a_user_namespace_are_host_binds():
    kernel = kernel_with()
    plan = rootfs_plan({"root": {"path": "r"}}, dict(FACTS, userns=True))
    rootfs.apply_mounts(kernel, plan)
    assert "mknodat" not in kernel.names()
    sources = [c[1] for c in kernel.calls_of("open_tree")]
    assert sources == ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]
    moved = [kernel.fd_paths[c[2]] for c in kernel.calls_of("move_mount")]
    assert moved == ["dev/null", "dev/zero", "dev/full", "dev/random", "dev/urandom", "dev/tty"]
    assert open_fds(kernel) == []


def test_make_in_root_follows_a_dangling_symlink_inside_the_root():
    kernel = FakeKernel()
    tree = Tree(kernel, {"dev": ("link", "/run/dev")})
    fd, created = paths.make_in_root(kernel, 3, "/dev/null", False, 0o600)
    assert created and tree.entries["run"] == "dir" and tree.entries["run/dev"] == "dir"
    assert tree.entries["run/dev/null"] == "file"
    assert kernel.fd_paths[fd] == "run/dev/null"
    kernel.close(fd)
    assert open_fds(kernel) == []


def test_make_in_root_keeps_escaping_symlinks_inside():
    kernel = FakeKernel()
    tree = Tree(kernel, {"vol": ("link", "../../../../etc")})
    fd, _ = paths.make_in_root(kernel, 3, "/vol/cron.d", True)
    kernel.close(fd)
    assert tree.entries["etc"] == "dir" and tree.entries["etc/cron.d"] == "dir"
    for call in kernel.calls_of("openat2"):
        assert call[4] & (fs.RESOLVE_IN_ROOT | fs.RESOLVE_BENEATH)


def test_make_in_root_gives_up_on_symlink_loops():
    kernel = FakeKernel()
    Tree(kernel, {"a": ("link", "b"), "b": ("link", "a")})
    with pytest.raises(KernelError) as info:
        paths.make_in_root(kernel, 3, "/a/x", True)
    assert info.value.errno == errno.ELOOP
    assert open_fds(kernel) == []


def test_make_in_root_opens_what_it_created_without_following_links():
    kernel = FakeKernel()
    Tree(kernel, {})
    fd, created = paths.make_in_root(kernel, 3, "/new", True)
    last = kernel.calls_of("openat2")[-1]
    assert created and last[1] == "new" and last[2] & os.O_NOFOLLOW
    assert last[4] == fs.RESOLVE_BENEATH | fs.RESOLVE_NO_SYMLINKS


def pivot_kernel(entries):
    kernel = FakeKernel()
    Tree(kernel, entries)
    return kernel


def test_pivot_root_sequence():
    kernel = pivot_kernel({})
    rootfs.apply_pivot(kernel, make_plan())
    names = kernel.names()
    assert names[:5] == ["open", "fchdir", "close", "pivot_root", "mount"]
    assert kernel.calls_of("pivot_root") == [(".", ".")]
    assert kernel.calls_of("mount") == [(None, ".", None, fs.MS_SLAVE | fs.MS_REC)]
    assert kernel.calls_of("umount2") == [(".", fs.MNT_DETACH)]
    assert kernel.calls_of("chdir") == [("/",)]
    assert open_fds(kernel) == []


def test_no_pivot_moves_and_chroots():
    kernel = pivot_kernel({})
    plan = rootfs_plan({"root": {"path": "r"}}, dict(FACTS, no_pivot=True))
    rootfs.apply_pivot(kernel, plan)
    assert "pivot_root" not in kernel.names()
    assert kernel.calls_of("mount") == [(".", "/", None, fs.MS_MOVE)]
    assert kernel.calls_of("chroot") == [(".",)]
    assert kernel.calls_of("chdir") == [("/",)]


def test_masks_files_with_a_verified_dev_null_and_dirs_with_a_read_only_tmpfs():
    kernel = pivot_kernel({"dev": "dir", "dev/null": ("chr", os.makedev(1, 3)), "proc": "dir",
                           "proc/kcore": "file", "proc/acpi": "dir", "proc/keys": "file"})
    plan = make_plan(maskedPaths=["/proc/kcore", "/proc/acpi", "/proc/missing", "/proc/keys"])
    rootfs.apply_pivot(kernel, plan)
    trees = kernel.calls_of("open_tree")
    assert len(trees) == 2 and all(t[1:] == ("", fs.OPEN_TREE_CLONE | fs.OPEN_TREE_CLOEXEC |
                                             fs.AT_EMPTY_PATH) for t in trees)
    assert all(kernel.fd_paths[t[0]] == "dev/null" for t in trees)
    assert kernel.calls_of("fsopen") == [("tmpfs",)]
    assert kernel.calls_of("fsmount")[0][1] & fs.MOUNT_ATTR_RDONLY
    targets = [kernel.fd_paths[c[2]] for c in kernel.calls_of("move_mount")]
    assert targets == ["proc/kcore", "proc/acpi", "proc/keys"]
    assert open_fds(kernel) == []


@pytest.mark.parametrize("entry", [("chr", os.makedev(1, 5)), "file", ("link", "/proc/sys/x")])
def test_a_replaced_dev_null_is_never_bound(entry):
    kernel = pivot_kernel({"dev": "dir", "dev/null": entry, "proc": "dir", "proc/kcore": "file",
                           "proc/sys": "dir", "proc/sys/x": "file"})
    with pytest.raises(ContainerError) as info:
        rootfs.apply_pivot(kernel, make_plan(maskedPaths=["/proc/kcore"]))
    assert info.value.field == "linux.maskedPaths" and "null device" in info.value.message
    assert "move_mount" not in kernel.names() and open_fds(kernel) == []


def test_readonly_paths_and_readonly_root():
    kernel = pivot_kernel({"proc": "dir", "proc/sys": "dir"})
    spec = {"root": {"path": "r", "readonly": True},
            "linux": {"readonlyPaths": ["/proc/sys", "/proc/none"]}}
    rootfs.apply_pivot(kernel, rootfs_plan(spec))
    (tree,) = kernel.calls_of("open_tree")
    assert tree[1:] == ("", fs.OPEN_TREE_CLONE | fs.OPEN_TREE_CLOEXEC | fs.AT_RECURSIVE |
                        fs.AT_EMPTY_PATH)
    (move,) = kernel.calls_of("move_mount")
    assert kernel.fd_paths[tree[0]] == "proc/sys" and move[2] == tree[0] and move[0] != tree[0]
    setattrs = kernel.calls_of("mount_setattr")
    assert setattrs[0][2:5] == (fs.AT_EMPTY_PATH | fs.AT_RECURSIVE, fs.MOUNT_ATTR_RDONLY, 0)
    assert setattrs[1][2:5] == (fs.AT_EMPTY_PATH, fs.MOUNT_ATTR_RDONLY, 0)
    assert kernel.fd_paths[setattrs[1][0]] == "/"
    assert open_fds(kernel) == []


def test_apply_console_binds_the_pty_fd_onto_a_fresh_placeholder_file():
    kernel = pivot_kernel({"dev": "dir"})
    rootfs.apply_console(kernel, 7)
    # whatever the image had at /dev/console is unlinked, never followed
    assert kernel.calls_of("unlinkat")[0][1] == "console"
    created = [c for c in kernel.calls_of("open") if c[0] == "console"]
    assert created[0][1] & os.O_EXCL and created[0][1] & os.O_NOFOLLOW
    # the pty is cloned from its fd: no name lookup through /proc
    assert kernel.calls_of("open_tree")[0][:2] == (7, "")
    assert open_fds(kernel) == []


def test_a_destination_that_resolves_into_procfs_is_refused():
    kernel = FakeKernel()
    tree = Tree(kernel, {"proc": "dir", "proc/self": "dir", "proc/self/attr": "dir",
                         "selfish": ("link", "/proc/self")})
    tree.procfs.update(("proc/self", "proc/self/attr"))
    plan = make_plan([{"destination": "/selfish/attr", "type": "tmpfs"}])
    plan["steps"] = plan["steps"][:1]
    with pytest.raises(ContainerError) as info:
        rootfs.apply_mounts(kernel, plan)
    assert info.value.field == "mounts[0].destination" and "procfs" in info.value.message
    assert "move_mount" not in kernel.names() and open_fds(kernel) == []


def test_a_bind_over_proc_must_be_procfs():
    kernel = kernel_with()
    plan = make_plan([{"destination": "/proc", "type": "bind", "source": "/tmp/fakeproc",
                       "options": ["rbind"]}])
    plan["steps"] = plan["steps"][:1]
    with pytest.raises(ContainerError) as info:
        rootfs.apply_mounts(kernel, plan)
    assert info.value.field == "mounts[0].source" and "not a proc filesystem" in info.value.message


def test_the_rootfs_parent_mount_is_found_by_walking_up():
    kernel = kernel_with()
    kernel.failures["mount"] = lambda args: errno.EINVAL if args[1] in ("/b/rootfs", "/b") \
        and args[3] == fs.MS_PRIVATE else None
    rootfs.apply_mounts(kernel, make_plan())
    private = [c[1] for c in kernel.calls_of("mount") if c[3] == fs.MS_PRIVATE]
    assert private == ["/b/rootfs", "/b", "/"]


def test_shared_root_propagation_is_applied_after_pivot_only():
    kernel = kernel_with()
    plan = make_plan(rootfsPropagation="rshared")
    rootfs.apply_mounts(kernel, plan)
    assert kernel.calls_of("mount")[:2] == [(None, "/", None, fs.MS_SHARED | fs.MS_REC),
                                            (None, "/b/rootfs", None, fs.MS_PRIVATE)]
    kernel = pivot_kernel({})
    rootfs.apply_pivot(kernel, plan)
    assert kernel.calls_of("mount")[-1] == (None, "/", None, fs.MS_SHARED | fs.MS_REC)
    assert kernel.names().index("pivot_root") < len(kernel.names()) - 1


def test_idmapped_bind_gets_its_user_namespace_before_it_is_attached():
    kernel = kernel_with()
    kernel.returns["make_userns"] = 77
    plan = make_plan([{"destination": "/data", "type": "bind", "source": "/vol",
                       "options": ["rbind", "ridmap"],
                       "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                       "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}])
    plan["steps"] = plan["steps"][:1]
    rootfs.apply_mounts(kernel, plan)
    assert kernel.calls_of("make_userns") == [("0 1000 1\n", "0 1000 1\n")]
    (idmap,) = kernel.calls_of("mount_setattr")
    assert idmap[2:] == (fs.AT_EMPTY_PATH | fs.AT_RECURSIVE, fs.MOUNT_ATTR_IDMAP, 0, 0, 77)
    assert kernel.names().index("mount_setattr") < kernel.names().index("move_mount")
    assert (77,) in kernel.calls_of("close")


def test_idmapped_sources_prepared_on_the_host_are_used_and_closed():
    plan = make_plan([{"destination": "/data", "type": "bind", "source": "/vol",
                       "options": ["bind", "idmap"],
                       "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                       "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]},
                      {"destination": "/plain", "type": "bind", "source": "/p", "options": ["bind"]}])
    plan["steps"] = plan["steps"][:2]
    host = kernel_with()
    host.returns["make_userns"] = 77
    prepared = rootfs.apply_idmapped_sources(host, plan)
    assert list(prepared) == [0] and host.calls_of("open_tree")[0][1] == "/vol"
    init = kernel_with()
    rootfs.apply_mounts(init, plan, prepared)
    assert [c[1] for c in init.calls_of("open_tree")] == ["/p"]  # /vol came prepared
    assert "make_userns" not in init.names()
    moved = [c[0] for c in init.calls_of("move_mount")]
    assert moved[0] == prepared[0] and (prepared[0],) in init.calls_of("close")


def test_idmap_refused_in_a_user_namespace_says_what_to_do():
    kernel = kernel_with()
    kernel.returns["make_userns"] = 77
    kernel.failures["mount_setattr"] = errno.EPERM
    plan = make_plan([{"destination": "/data", "type": "bind", "source": "/vol",
                       "options": ["bind"], "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}],
                       "gidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}])
    with pytest.raises(ContainerError) as info:
        rootfs.apply_mounts(kernel, plan)
    assert info.value.field == "mounts[0].options" and "apply_idmapped_sources" in info.value.line()
    assert open_fds(kernel) == []


def test_mknod_refused_falls_back_to_binding_the_host_node():
    kernel = kernel_with()
    kernel.failures["mknodat"] = lambda args: errno.EPERM if args[1] == "zero" else None
    rootfs.apply_mounts(kernel, make_plan([]))
    assert [c[1] for c in kernel.calls_of("open_tree")] == ["/dev/zero"]
    assert [c[1] for c in kernel.calls_of("fchownat")] == ["null", "full", "random", "urandom", "tty"]
    assert open_fds(kernel) == []


def test_fifos_are_made_even_in_a_user_namespace():
    kernel = kernel_with()
    plan = rootfs_plan({"root": {"path": "r"}, "linux": {"devices": [
        {"path": "/dev/myfifo", "type": "p", "fileMode": 0o620}]}}, dict(FACTS, userns=True))
    rootfs.apply_mounts(kernel, plan)
    assert kernel.calls_of("mknodat") == [(kernel.calls_of("mknodat")[0][0], "myfifo",
                                           stat.S_IFIFO | 0o620, 0)]
    assert "/dev/myfifo" not in [c[1] for c in kernel.calls_of("open_tree")]
