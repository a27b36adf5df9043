"""Carries out a rootfs plan (capsa.runtime.mounts) in the container's own mount namespace.

Every mount goes through fds (open_tree/fsmount + move_mount onto an O_PATH fd resolved with
RESOLVE_IN_ROOT), so a destination swapped for a symlink cannot redirect it (CVE-2021-30465).
Imports only os, stat, the fs constants, paths, mounts' tables and errors; all calls go through
`kernel`.
"""
import errno
import os
import stat

from capsa.errors import ContainerError, KernelError
from capsa.runtime.apply.paths import (is_dir_fd, make_in_root, open_in_root, split_path,
                                        try_open_in_root)
from capsa.runtime.mounts import PROC_MOUNTS_ALLOWED
from capsa.syscalls.fs import (
    AT_EMPTY_PATH, AT_FDCWD, AT_RECURSIVE, FSCONFIG_CMD_CREATE, FSCONFIG_SET_FLAG,
    FSCONFIG_SET_STRING, MNT_DETACH, MOUNT_ATTR_IDMAP, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH,
    MS_BIND, MS_MOVE, MS_PRIVATE, MS_REC, MS_SHARED, MS_SLAVE, MS_UNBINDABLE, OPEN_TREE_CLOEXEC,
    OPEN_TREE_CLONE, PROC_SUPER_MAGIC)

_EMPTY = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
_MASK_ATTRS = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC


def _fail(step, err, what):
    raise ContainerError("%s %s: %s" % (what, step.get("dest", ""), err.message),
                         field=step.get("field"))


def apply_mounts(kernel, plan, prepared=None):
    """Step 1 in init: propagation of /, the rootfs bound onto itself, every mount, /dev.
    `prepared`: what apply_idmapped_sources returned, when the container has a user namespace."""
    prepared = dict(prepared or {})
    try:
        _apply_mounts(kernel, plan, prepared)
    finally:
        for fd in prepared.values():
            kernel.close(fd)


def _apply_mounts(kernel, plan, prepared):
    propagation, recursive = plan["propagation"]
    kernel.mount(None, "/", None, propagation | (MS_REC if recursive else 0))
    rootfs = plan["rootfs"]
    try:
        apply_parent_private(kernel, rootfs, propagation)
        kernel.mount(rootfs, rootfs, None, MS_BIND | MS_REC)
    except KernelError as err:
        raise ContainerError("cannot use %s as the root filesystem: %s" % (rootfs, err.message),
                             field="root.path", hint="point root.path at an existing directory")
    root_fd = kernel.open(rootfs, os.O_PATH | os.O_DIRECTORY)
    try:
        old_umask = kernel.umask(0)
        try:
            for index, step in enumerate(plan["steps"]):
                try:
                    if index in prepared:
                        _step_bind(kernel, root_fd, step, prepared.pop(index))
                    else:
                        _STEPS[step["op"]](kernel, root_fd, step)
                except KernelError as err:
                    _fail(step, err, step["op"])
        finally:
            kernel.umask(old_umask)
    finally:
        kernel.close(root_fd)


def apply_parent_private(kernel, path, propagation):
    """Make the mount holding `path` private (slave if asked): pivot_root(2) refuses a shared
    parent, and the rootfs self-bind would otherwise propagate to the host's peers."""
    flags = MS_SLAVE if propagation == MS_SLAVE else MS_PRIVATE
    while True:
        try:
            kernel.mount(None, path, None, flags)
            return
        except KernelError as err:
            # EINVAL: not a mount point; the holding mount is further up.
            if err.errno != errno.EINVAL or path == "/":
                raise
        path = path.rsplit("/", 1)[0] or "/"


def _set_attrs(kernel, mount_fd, step):
    attrs, rattrs = step["attrs"], step["rattrs"]
    if rattrs[0] or rattrs[1]:
        kernel.mount_setattr(mount_fd, "", AT_EMPTY_PATH | AT_RECURSIVE, rattrs[0], rattrs[1])
    if attrs[0] or attrs[1]:
        kernel.mount_setattr(mount_fd, "", AT_EMPTY_PATH, attrs[0], attrs[1])


def _set_propagation(kernel, mount_fd, step):
    for kind, recursive in step["propagation"]:
        kernel.mount_setattr(mount_fd, "", AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0),
                             0, 0, kind)


def _attach(kernel, root_fd, step, mount_fd, is_dir):
    """Move a detached mount onto the destination, opened (or created) inside the root."""
    target, _ = make_in_root(kernel, root_fd, step["dest"], is_dir)
    try:
        if step.get("strict"):
            _check_strict(kernel, root_fd, step)
        _check_proc(kernel, step, mount_fd, target)
        if is_dir_fd(kernel, target) != is_dir:
            raise ContainerError("%s in the container is a %s, but the source is a %s" % (
                step["dest"], "directory" if not is_dir else "file",
                "directory" if is_dir else "file"), field=step["field"] + ".destination")
        kernel.move_mount(mount_fd, "", target, "", _EMPTY)
    finally:
        kernel.close(target)


def _check_proc(kernel, step, mount_fd, target):
    """Over /proc only procfs; inside procfs only the lxcfs files, wherever symlinks led."""
    if step["dest"] == "/proc":
        if kernel.fstatfs_type(mount_fd) != PROC_SUPER_MAGIC:
            raise ContainerError("%s is not a proc filesystem" % step.get("source"),
                                 field=step["field"] + ".source", hint="mount type proc on /proc")
    elif step["dest"] not in PROC_MOUNTS_ALLOWED and \
            kernel.fstatfs_type(target) == PROC_SUPER_MAGIC:
        raise ContainerError("%s resolves into procfs: mounts there are refused" % step["dest"],
                             field=step["field"] + ".destination")


def _check_strict(kernel, root_fd, step):
    # proc and sysfs only on a real directory: no symlink anywhere on the way (CVE-2019-19921).
    try:
        fd = open_in_root(kernel, root_fd, step["dest"], os.O_PATH | os.O_DIRECTORY,
                          no_symlinks=True)
    except KernelError as err:
        raise ContainerError("%s must be a real directory in the rootfs, not a symlink (%s)" % (
            step["dest"], err.message), field=step["field"] + ".destination")
    kernel.close(fd)


def _open_source(kernel, step):
    """The source of a bind as a detached tree (idmapped if asked); the caller closes it."""
    flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (AT_RECURSIVE if step["recursive"] else 0)
    try:
        tree = kernel.open_tree(AT_FDCWD, step["source"], flags)
    except KernelError as err:
        raise ContainerError("cannot bind %s: %s" % (step["source"], err.message),
                             field=step["field"] + ".source", hint="create the source first")
    if step.get("idmap"):
        try:
            _set_idmap(kernel, tree, step["idmap"])
        except KernelError as err:
            kernel.close(tree)
            raise ContainerError("cannot idmap %s: %s" % (step["source"], err.message),
                                 field=step["field"] + ".options",
                                 hint="inside a user namespace the kernel refuses it: the runtime "
                                      "must call apply_idmapped_sources before entering one")
    return tree


def apply_idmapped_sources(kernel, plan):
    """Host side, before the container's user namespace exists: idmapping a mount needs privilege
    over the namespace that owns the source filesystem (mount_setattr(2)), which the container's
    init no longer has. Returns {step index: detached tree fd} for apply_mounts(prepared=...)."""
    prepared = {}
    try:
        for index, step in enumerate(plan["steps"]):
            if step["op"] == "bind" and step.get("idmap"):
                prepared[index] = _open_source(kernel, step)
    except BaseException:
        for fd in prepared.values():
            kernel.close(fd)
        raise
    return prepared


def _step_bind(kernel, root_fd, step, tree=None):
    if tree is None:
        tree = _open_source(kernel, step)
    try:
        _set_attrs(kernel, tree, step)
        _attach(kernel, root_fd, step, tree, is_dir_fd(kernel, tree))
        _set_propagation(kernel, tree, step)
    finally:
        kernel.close(tree)


def _set_idmap(kernel, tree, idmap):
    # MOUNT_ATTR_IDMAP only on a detached mount, before move_mount (kernel 5.12).
    userns = kernel.make_userns(idmap["uid_map"], idmap["gid_map"])
    try:
        kernel.mount_setattr(tree, "", AT_EMPTY_PATH | (AT_RECURSIVE if idmap["recursive"] else 0),
                             MOUNT_ATTR_IDMAP, 0, 0, userns)
    finally:
        kernel.close(userns)


def _new_fs(kernel, fstype, source, data, attr_flags):
    fsfd = kernel.fsopen(fstype)
    try:
        kernel.fsconfig(fsfd, FSCONFIG_SET_STRING, "source", source)
        for key, value in data:
            if value is None:
                kernel.fsconfig(fsfd, FSCONFIG_SET_FLAG, key)
            else:
                kernel.fsconfig(fsfd, FSCONFIG_SET_STRING, key, value)
        kernel.fsconfig(fsfd, FSCONFIG_CMD_CREATE)
        return kernel.fsmount(fsfd, attr_flags)
    finally:
        kernel.close(fsfd)


def _step_fs(kernel, root_fd, step):
    try:
        mnt = _new_fs(kernel, step["fstype"], step["source"], step["data"], step["attrs"][0])
    except KernelError as err:
        if step["fstype"] == "sysfs" and err.errno == errno.EPERM:
            # sysfs needs the network namespace's owner: rootless containers bind the host's.
            _step_bind(kernel, root_fd, dict(step, source="/sys", recursive=True, strict=True))
            return
        raise ContainerError("cannot mount %s on %s: %s" % (step["fstype"], step["dest"],
                                                            err.message),
                             field=step["field"], hint="check the type and the options")
    try:
        if step["tmpcopyup"]:
            _copy_up(kernel, root_fd, step, mnt)
        if step["rattrs"][0] or step["rattrs"][1]:
            kernel.mount_setattr(mnt, "", AT_EMPTY_PATH | AT_RECURSIVE, step["rattrs"][0],
                                 step["rattrs"][1])
        _attach(kernel, root_fd, step, mnt, True)
        _set_propagation(kernel, mnt, step)
    finally:
        kernel.close(mnt)


def _copy_up(kernel, root_fd, step, mnt):
    try:
        src = open_in_root(kernel, root_fd, step["dest"], os.O_RDONLY | os.O_DIRECTORY)
    except KernelError as err:
        if err.errno == errno.ENOENT:
            return
        raise
    try:
        kernel.copy_tree(src, mnt)
    finally:
        kernel.close(src)


def _step_setattr(kernel, root_fd, step):
    fd = open_in_root(kernel, root_fd, step["dest"])
    try:
        kernel.mount_setattr(fd, "", AT_EMPTY_PATH, step["attrs"][0], step["attrs"][1])
    finally:
        kernel.close(fd)


def _parent_and_name(kernel, root_fd, path):
    parts = split_path(path)
    parent, _ = make_in_root(kernel, root_fd, "/".join(parts[:-1]), True)
    return parent, parts[-1]


def _step_symlink(kernel, root_fd, step):
    parent, name = _parent_and_name(kernel, root_fd, step["dest"])
    try:
        if step["replace"]:
            try:
                kernel.unlinkat(parent, name)
            except KernelError as err:
                if err.errno != errno.ENOENT:
                    raise
        try:
            kernel.symlinkat(step["target"], parent, name)
        except KernelError as err:
            if err.errno != errno.EEXIST or step["replace"]:
                raise
    finally:
        kernel.close(parent)


def _step_mkdir(kernel, root_fd, step):
    fd, _ = make_in_root(kernel, root_fd, step["dest"], True, step["mode"])
    kernel.close(fd)


def _bind_node(kernel, root_fd, host_path, dest):
    """Bind one host node (a device, a pty) onto an empty file made at `dest` in the root."""
    target, _ = make_in_root(kernel, root_fd, dest, False, 0o600)
    try:
        tree = kernel.open_tree(AT_FDCWD, host_path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
        try:
            kernel.move_mount(tree, "", target, "", _EMPTY)
        finally:
            kernel.close(tree)
    finally:
        kernel.close(target)


_NODE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def _step_device(kernel, root_fd, step):
    # mknod of a device is refused in a user namespace (fifos are not): bind the host's node.
    if step["bind"] and step["type"] != "p":
        _bind_node(kernel, root_fd, step["path"], step["path"])
        return
    parent, name = _parent_and_name(kernel, root_fd, step["path"])
    try:
        try:
            kernel.unlinkat(parent, name)
        except KernelError as err:
            if err.errno != errno.ENOENT:
                raise
        try:
            kernel.mknodat(parent, name, _NODE_TYPES[step["type"]] | step["mode"],
                           os.makedev(step["major"], step["minor"]))
        except KernelError as err:
            if err.errno != errno.EPERM or step["type"] == "p":
                raise
            # No CAP_MKNOD (a user namespace the plan did not know of, an LSM): bind instead.
            _bind_node(kernel, root_fd, step["path"], step["path"])
            return
        kernel.fchownat(parent, name, step["uid"], step["gid"])
    finally:
        kernel.close(parent)


_STEPS = {"bind": _step_bind, "fs": _step_fs, "setattr": _step_setattr, "symlink": _step_symlink,
          "mkdir": _step_mkdir, "device": _step_device}


def apply_pivot(kernel, plan):
    """Step 2 in init: enter the rootfs (pivot_root, or MS_MOVE + chroot), drop the old root,
    mask and protect paths, make / read-only if asked; cwd is / afterwards."""
    new_root = kernel.open(plan["rootfs"], os.O_RDONLY | os.O_DIRECTORY)
    try:
        kernel.fchdir(new_root)
    finally:
        kernel.close(new_root)
    if plan["no_pivot"]:
        kernel.mount(".", "/", None, MS_MOVE)
        kernel.chroot(".")
    else:
        kernel.pivot_root(".", ".")
        # The old root now sits on top of ".": cut its propagation before detaching it, or
        # the unmount would travel to the host's peers.
        kernel.mount(None, ".", None, MS_SLAVE | MS_REC)
        kernel.umount2(".", MNT_DETACH)
    kernel.chdir("/")
    propagation, recursive = plan["propagation"]
    if propagation in (MS_SHARED, MS_UNBINDABLE):
        # Only now: on the old root this would have reached the host through shared peers.
        kernel.mount(None, "/", None, propagation | (MS_REC if recursive else 0))
    root_fd = kernel.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        apply_masks(kernel, root_fd, plan["masked"])
        for index, path in enumerate(plan["readonly_paths"]):
            try:
                _make_readonly(kernel, root_fd, path)
            except KernelError as err:
                raise ContainerError("cannot make %s read-only: %s" % (path, err.message),
                                     field="linux.readonlyPaths[%d]" % index)
        if plan["readonly"]:
            try:
                kernel.mount_setattr(root_fd, "", AT_EMPTY_PATH, MOUNT_ATTR_RDONLY, 0)
            except KernelError as err:
                raise ContainerError("cannot make / read-only: " + err.message,
                                     field="root.readonly")
    finally:
        kernel.close(root_fd)


def open_dev_null(kernel, root_fd):
    """The container's /dev/null, checked to be the null device (char 1:3) through the very fd
    that will be bound: a symlink or another node there must not be bound over a masked path
    (CVE-2025-31133)."""
    try:
        fd = open_in_root(kernel, root_fd, "/dev/null")
    except KernelError as err:
        raise ContainerError("cannot open /dev/null to mask paths: " + err.message,
                             field="linux.maskedPaths")
    info = kernel.fstat(fd)
    if not stat.S_ISCHR(info.st_mode) or (os.major(info.st_rdev), os.minor(info.st_rdev)) != (1, 3):
        kernel.close(fd)
        raise ContainerError("/dev/null in the container is not the null device (char 1:3)",
                             field="linux.maskedPaths",
                             hint="do not replace /dev/null in the image")
    return fd


def apply_masks(kernel, root_fd, masked):
    """Hide each existing path: files under /dev/null, directories under a read-only tmpfs."""
    null_fd = None
    try:
        for index, path in enumerate(masked):
            field = "linux.maskedPaths[%d]" % index
            target = try_open_in_root(kernel, root_fd, path)
            if target is None:
                continue
            try:
                if is_dir_fd(kernel, target):
                    mnt = _new_fs(kernel, "tmpfs", "tmpfs", [], _MASK_ATTRS)
                else:
                    if null_fd is None:
                        null_fd = open_dev_null(kernel, root_fd)
                    mnt = kernel.open_tree(null_fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC |
                                           AT_EMPTY_PATH)
                try:
                    kernel.move_mount(mnt, "", target, "", _EMPTY)
                finally:
                    kernel.close(mnt)
            except KernelError as err:
                raise ContainerError("cannot mask %s: %s" % (path, err.message), field=field)
            finally:
                kernel.close(target)
    finally:
        if null_fd is not None:
            kernel.close(null_fd)


def _make_readonly(kernel, root_fd, path):
    target = try_open_in_root(kernel, root_fd, path)
    if target is None:
        return
    try:
        tree = kernel.open_tree(target, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE |
                                AT_EMPTY_PATH)
        try:
            kernel.move_mount(tree, "", target, "", _EMPTY)
            kernel.mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, MOUNT_ATTR_RDONLY, 0)
        finally:
            kernel.close(tree)
    finally:
        kernel.close(target)


def apply_console(kernel, slave_fd, root="/"):
    """Bind the pty slave, from its own fd (no name lookup a raced /proc could redirect,
    CVE-2025-52565), onto a fresh empty /dev/console: whatever the image put there (a symlink
    to a procfs file, say) is removed first, never followed."""
    from capsa.syscalls.fs import AT_EMPTY_PATH, PROC_SUPER_MAGIC, SYSFS_MAGIC
    root_fd = kernel.open(root, os.O_PATH | os.O_DIRECTORY)
    parent = target = tree = None
    try:
        parent, name = _parent_and_name(kernel, root_fd, "/dev/console")
        if kernel.fstatfs_type(parent) in (PROC_SUPER_MAGIC, SYSFS_MAGIC):
            raise ContainerError("/dev resolves into procfs or sysfs", field="process.terminal",
                                 hint="the image's /dev must be a plain folder")
        try:
            kernel.unlinkat(parent, name)
        except KernelError as err:
            if err.errno != errno.ENOENT:
                raise
        placeholder = kernel.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                  0o600, dirfd=parent)
        kernel.close(placeholder)
        target = kernel.open(name, os.O_PATH | os.O_NOFOLLOW, dirfd=parent)
        tree = kernel.open_tree(slave_fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH)
        kernel.move_mount(tree, "", target, "", _EMPTY)
    except KernelError as err:
        raise ContainerError("cannot bind the terminal on /dev/console: %s" % err.message,
                             field="process.terminal")
    finally:
        for fd in (tree, target, parent):
            if fd is not None:
                kernel.close(fd)
        kernel.close(root_fd)

