"""Root filesystems for containers: an overlayfs of an image's layers under a per-container upper
folder, a plain folder, an extracted tarball, or a disk image (qcow2/raw) attached read-only
through a loop device under an overlay. Every step is recorded (container_dir/rootfs.json and
<store>/images/attachments/) before it is made, so release and crash cleanup can undo it.
Mounts go through the kernel seam; engine side, must not import capsa.runtime.
"""
import os

from capsa import jsonlite
from capsa.errors import CapsaError, ImageError

DISK_SUFFIXES = (".qcow2", ".img", ".raw")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.zst", ".tar.zstd", ".tar.bz2")
RECORD = "rootfs.json"
MS_RDONLY = 0x1
MNT_DETACH = 0x2
# the legacy mount(2) data argument is one page; longer lowerdir lists use fsconfig lowerdir+
_MOUNT_DATA_MAX = 4000


def build_overlay_options(lower_dirs, upper, work, volatile=False):
    """The overlay mount data: lowerdir lists the top layer first (overlayfs(5)); `volatile`
    for an upper layer deleted with the container (`--rm`)."""
    for d in list(lower_dirs) + [upper, work]:
        if "," in d or ":" in d:
            raise ImageError("overlay folder %r contains ',' or ':'" % d, field="store_root",
                             hint="use a store and container path without those characters")
    from capsa.engine.images.layer import read_in_userns
    return "lowerdir=%s,upperdir=%s,workdir=%s%s%s" % (
        ":".join(reversed(lower_dirs)), upper, work, ",volatile" if volatile else "",
        # rootless: overlayfs in a user namespace keeps its xattrs under user.overlay.*
        ",userxattr" if read_in_userns() else "")


def build_rootfs_kind(target):
    """'folder', 'tar', 'disk' or 'image' for what apply_container_rootfs was given."""
    text = os.fspath(target)
    if not text.startswith("/") and not text.startswith("."):
        # image references never start with / or .: `busybox` or `localhost/bb` is an image
        # even when a file of that name is in the current folder
        return "image"
    if os.path.isdir(text):
        return "folder"
    if os.path.isfile(text):
        lower = text.lower()
        if lower.endswith(DISK_SUFFIXES):
            return "disk"
        if lower.endswith(TAR_SUFFIXES):
            return "tar"
        from capsa.engine.images.disk import read_is_qcow2
        return "disk" if read_is_qcow2(text) else "tar"
    raise ImageError("rootfs %s does not exist" % text, field="rootfs",
                     hint="give an existing folder, tarball, .qcow2 or .img disk")


def _kernel(kernel):
    if kernel is None:
        from capsa.syscalls.kernel import Kernel
        kernel = Kernel()
    return kernel


def _store(store):
    from capsa.engine.images.store import ImageStore
    return store if isinstance(store, ImageStore) else ImageStore(os.fspath(store))


def _save(container_dir, record):
    # renamed into place but not fsynced (an fsync cost 0.3-6 ms each, 12 a run): what the
    # record undoes (mounts, loop devices, qcow2 exports) does not outlive a host crash, and
    # image users whose folder is gone are dropped by ImageStore.users
    from capsa.engine.images.store import write_json_atomic
    write_json_atomic(os.path.join(container_dir, RECORD), record, durable=False)
    if record.get("attachment"):
        write_json_atomic(record["attachment"], record, durable=False)


def apply_container_rootfs(store, container_dir, image_ref_or_path, readonly=False, kernel=None,
                           disk_writable=False, volatile=False):
    """Prepare the root filesystem of a container; returns the rootfs path for config.json.

    image: overlay of the layers under container_dir/upper, at container_dir/rootfs (no copy);
    folder: the folder itself; tarball: extracted into container_dir/rootfs; disk: the root
    partition through a loop device, read-only under an overlay (or mounted read-write with
    disk_writable). `volatile`: the upper layer is thrown away with the container (`--rm`), so
    the overlay skips syncing it (overlayfs "volatile", Linux 5.10): the unmount of an overlay
    otherwise syncs its upper filesystem, 2-13 ms measured here.
    On failure everything made so far is undone and ImageError raised."""
    container_dir = os.path.abspath(os.fspath(container_dir))
    os.makedirs(container_dir, exist_ok=True)
    kind = build_rootfs_kind(image_ref_or_path)
    if kind == "folder":
        path = os.path.abspath(os.fspath(image_ref_or_path))
        _save(container_dir, {"kind": "folder", "rootfs": path, "steps": []})
        return path
    store = _store(store)
    store.ensure()
    os.makedirs(store.path("attachments"), exist_ok=True)
    from capsa.engine.images.store import build_path_key
    key = build_path_key(container_dir)
    record = {"kind": kind, "rootfs": os.path.join(container_dir, "rootfs"), "steps": [],
              "container_dir": container_dir, "readonly": bool(readonly),
              "attachment": store.path("attachments", key + ".json"),
              "volatile": bool(volatile)}
    _save(container_dir, record)
    kernel = _kernel(kernel)
    try:
        if kind == "tar":
            _apply_tar(container_dir, record, os.fspath(image_ref_or_path))
        elif kind == "image":
            _apply_image(store, kernel, container_dir, record, image_ref_or_path, readonly)
        else:
            _apply_disk(kernel, container_dir, record, os.path.abspath(image_ref_or_path),
                        readonly, disk_writable)
    except BaseException as exc:
        try:
            apply_release_rootfs(container_dir, kernel)
        except CapsaError as cleanup:
            if isinstance(exc, CapsaError):
                exc.message += " (and cleanup failed: %s)" % cleanup.line()
        raise
    return record["rootfs"]


def _step(container_dir, record, *steps):
    """Record steps before they are made; undoing a step never made is a no-op."""
    record["steps"].extend(steps)
    _save(container_dir, record)


def _apply_tar(container_dir, record, path):
    from capsa.engine.images.layer import DecompressedFile, apply_unpack_layer
    rootfs = record["rootfs"]
    _step(container_dir, record, {"do": "folder", "path": rootfs})
    os.mkdir(rootfs, 0o755)
    with DecompressedFile(path) as stream:
        apply_unpack_layer(stream, rootfs, overlay=False)


def _apply_overlay(kernel, container_dir, record, lower_dirs, readonly):
    upper = os.path.join(container_dir, "upper")
    work = os.path.join(container_dir, "work")
    rootfs = record["rootfs"]
    volatile = record.get("volatile", False)
    data = build_overlay_options(lower_dirs, upper, work, volatile)
    _step(container_dir, record, *([{"do": "folder", "path": folder}
                                    for folder in (upper, work, rootfs)]
                                   + [{"do": "mount", "path": rootfs}]))
    for folder in (upper, work, rootfs):
        os.makedirs(folder, mode=0o755, exist_ok=True)
    flags = MS_RDONLY if readonly else 0
    if len(data) <= _MOUNT_DATA_MAX:
        kernel.mount("overlay", rootfs, "overlay", flags, data)
    else:
        _apply_overlay_fsconfig(kernel, lower_dirs, upper, work, rootfs, readonly, volatile)


def _apply_overlay_fsconfig(kernel, lower_dirs, upper, work, rootfs, readonly, volatile=False):
    from capsa.syscalls.fs import (AT_FDCWD, FSCONFIG_CMD_CREATE, FSCONFIG_SET_FLAG,
                                   FSCONFIG_SET_STRING, MOUNT_ATTR_RDONLY, MOVE_MOUNT_F_EMPTY_PATH)
    fsfd = kernel.fsopen("overlay")
    try:
        # lowerdir+ (one layer per call, top first) needs Linux 6.8; it lifts the page limit
        for lower in reversed(lower_dirs):
            kernel.fsconfig(fsfd, FSCONFIG_SET_STRING, "lowerdir+", lower)
        kernel.fsconfig(fsfd, FSCONFIG_SET_STRING, "upperdir", upper)
        kernel.fsconfig(fsfd, FSCONFIG_SET_STRING, "workdir", work)
        if volatile:
            kernel.fsconfig(fsfd, FSCONFIG_SET_FLAG, "volatile")
        kernel.fsconfig(fsfd, FSCONFIG_CMD_CREATE)
        mfd = kernel.fsmount(fsfd, MOUNT_ATTR_RDONLY if readonly else 0)
        try:
            kernel.move_mount(mfd, "", AT_FDCWD, rootfs, MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            kernel.close(mfd)
    finally:
        kernel.close(fsfd)


def _apply_image(store, kernel, container_dir, record, ref, readonly):
    with store.lock("gc", shared=True):
        image = store.resolve(ref)
        _step(container_dir, record, {"do": "user", "image": image["id"], "store": store.root})
        store.add_user(image["id"], container_dir)
    record["image"] = image["id"]
    _apply_overlay(kernel, container_dir, record, image["layer_dirs"], readonly)


def _apply_disk(kernel, container_dir, record, image, readonly, writable):
    from capsa.engine.images import disk
    disk_dir = os.path.join(container_dir, "disk")
    _step(container_dir, record, {"do": "folder", "path": disk_dir})
    os.makedirs(disk_dir, exist_ok=True)
    raw = image
    if disk.read_is_qcow2(image):
        raw = os.path.join(disk_dir, "export.raw")
        pid_path = os.path.join(disk_dir, "qsd.pid")
        _step(container_dir, record, {"do": "export", "path": raw, "pidfile": pid_path})
        pid = disk.apply_qcow2_export(image, raw, pid_path, writable)
        record["steps"][-1]["pid"] = pid
        _save(container_dir, record)
    part = disk.read_root_partition(raw)
    record["partition"] = part
    _step(container_dir, record, {"do": "loop", "backing": raw, "offset": part["offset"]})
    device = disk.apply_loop_attach(raw, part["offset"], part["size"], readonly=not writable)
    record["steps"][-1]["device"] = device
    _save(container_dir, record)
    if writable:
        rootfs = record["rootfs"]
        _step(container_dir, record, {"do": "folder", "path": rootfs})
        os.makedirs(rootfs, exist_ok=True)
        _step(container_dir, record, {"do": "mount", "path": rootfs})
        kernel.mount(device, rootfs, part["fstype"], MS_RDONLY if readonly else 0, None)
        return
    lower = os.path.join(disk_dir, "lower")
    _step(container_dir, record, {"do": "folder", "path": lower})
    os.makedirs(lower, exist_ok=True)
    _step(container_dir, record, {"do": "mount", "path": lower})
    # ext4 "norecovery": a read-only block device cannot replay a dirty journal
    kernel.mount(device, lower, part["fstype"], MS_RDONLY,
                 "norecovery" if part["fstype"] in ("ext4", "xfs") else None)
    _apply_overlay(kernel, container_dir, record, [lower], readonly)


def read_mountpoints():
    """Mount points of this mount namespace (from /proc/self/mountinfo, octal escapes decoded)."""
    points = set()
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            points.add(build_unescaped(line.split(b" ")[4]))
    return points


def build_unescaped(raw):
    """A mountinfo path: the kernel writes space, tab, newline and backslash as \\ooo (octal).
    By hand rather than the unicode_escape codec, whose import costs every `capsa run --rm`."""
    if b"\\" not in raw:
        return raw.decode(errors="replace")
    out = bytearray()
    i = 0
    while i < len(raw):
        octal = raw[i + 1:i + 4]
        if raw[i] == 0x5c and len(octal) == 3 and all(0x30 <= c <= 0x37 for c in octal):
            out.append(int(octal, 8) & 0xff)
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode(errors="replace")


def _undo(kernel, step):
    what = step["do"]
    if what == "mount":
        if step["path"] in read_mountpoints():
            try:
                kernel.umount2(step["path"], 0)
            except CapsaError:
                kernel.umount2(step["path"], MNT_DETACH)
    elif what == "loop":
        from capsa.engine.images import disk
        device = step.get("device")
        if device and disk.read_loop_backing(device) == step["backing"]:
            disk.apply_loop_detach(device)
    elif what == "export":
        from capsa.engine.images import disk
        if step.get("pid"):
            disk.apply_stop_export(step["pid"], step["path"])
        if step["path"] in read_mountpoints():
            kernel.umount2(step["path"], MNT_DETACH)
    elif what == "folder":
        from capsa.engine.images.store import _remove_tree
        path = step["path"]
        # rmtree descends into mount points: with a disk still mounted below, it would delete
        # the disk's files
        busy = [m for m in read_mountpoints() if m == path or m.startswith(path + "/")]
        if busy:
            raise ImageError("%s is still mounted; left in place" % busy[0], field="rootfs")
        if os.path.isdir(path):
            _remove_tree(path)
    elif what == "user":
        from capsa.engine.images.store import ImageStore
        ImageStore(step["store"]).remove_user(step["image"], step["container_dir"])


def _release(kernel, record):
    errors = []
    for step in reversed(record.get("steps", [])):
        if step["do"] == "user":
            step = dict(step, container_dir=record["container_dir"])
        if step["do"] == "folder" and errors:
            continue        # something is still attached: keep the files it may be using
        try:
            _undo(kernel, step)
        except (CapsaError, OSError) as exc:
            errors.append(exc.line() if isinstance(exc, CapsaError) else str(exc))
    if errors:
        raise ImageError("could not release the rootfs of %s: %s"
                         % (record.get("container_dir"), "; ".join(errors)), field="rootfs",
                         hint="run `capsa image prune` to retry stale cleanup")
    if record.get("attachment"):
        try:
            os.unlink(record["attachment"])
        except FileNotFoundError:
            pass


def apply_release_rootfs(container_dir, kernel=None):
    """Undo apply_container_rootfs for container_dir: unmount, detach loop devices, stop qcow2
    exports, drop the image use. Idempotent; a folder rootfs is left untouched."""
    container_dir = os.path.abspath(os.fspath(container_dir))
    path = os.path.join(container_dir, RECORD)
    try:
        with open(path, "rb") as f:
            record = jsonlite.loads(f.read())
    except FileNotFoundError:
        return
    except ValueError:
        raise ImageError("%s is corrupt" % path, field="rootfs",
                         hint="unmount %s/rootfs by hand, then remove the file" % container_dir) \
            from None
    record["container_dir"] = container_dir
    _release(_kernel(kernel), record)
    os.unlink(path)


def apply_clean_stale(store_root, kernel=None):
    """Release attachments whose container folder is gone (the engine crashed or the folder was
    deleted without a release). Returns the container folders cleaned."""
    from capsa.engine.images.store import ImageStore
    folder = ImageStore(store_root).path("attachments")
    cleaned = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return cleaned
    kernel = _kernel(kernel)
    for name in names:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                record = jsonlite.loads(f.read())
        except (OSError, ValueError):
            continue
        where = record.get("container_dir")
        if where and os.path.isfile(os.path.join(where, RECORD)):
            continue
        record["attachment"] = path
        _release(kernel, record)
        cleaned.append(where)
    return cleaned
