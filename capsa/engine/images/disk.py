"""Disk images as root filesystems: finding the root partition (GPT, MBR, bare filesystem) and
attaching it (qcow2 through qemu-storage-daemon's FUSE export as a raw file, then a loop device).

Partition parsing is pure (it reads through a `read(offset, length)` callable); attaching runs
qemu-storage-daemon and losetup. Engine side; must not import capsa.runtime.
"""
import os

from capsa.errors import ImageError

SECTOR = 512
QCOW2_MAGIC = b"QFI\xfb"
GPT_ROOT = {"x86_64": "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            "aarch64": "b921b045-1df0-41c3-af44-4c6f280d3fae"}
GPT_LINUX_DATA = "0fc63daf-8483-4772-8e79-3d69d8477de4"
MBR_LINUX = 0x83
MBR_GPT_PROTECTIVE = 0xEE
MBR_EXTENDED = (0x05, 0x0F, 0x85)


def build_fs_type(read, offset):
    """'ext4', 'xfs', 'btrfs' or None: the filesystem whose superblock starts at `offset`."""
    if read(offset + 1080, 2) == b"\x53\xef":
        return "ext4"
    if read(offset, 4) == b"XFSB":
        return "xfs"
    if read(offset + 0x10040, 8) == b"_BHRfS_M":
        return "btrfs"
    return None


def build_partitions(read, disk_size):
    """[{"number", "offset", "size", "type"}] from a GPT or MBR; [] when there is no table."""
    import struct
    import uuid
    mbr = read(0, SECTOR)
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        return []
    entries = [mbr[446 + 16 * i:462 + 16 * i] for i in range(4)]
    if any(e[4] == MBR_GPT_PROTECTIVE for e in entries):
        header = read(SECTOR, 92)
        if header[:8] != b"EFI PART":
            raise ImageError("disk has a protective MBR but no GPT header", field="rootfs",
                             hint="repair the partition table (sgdisk -v)")
        lba, count, size = struct.unpack_from("<QII", header, 72)
        if not 0 < count <= 1024 or size < 128:
            raise ImageError("GPT header lists %d entries of %d bytes" % (count, size),
                             field="rootfs", hint="repair the partition table")
        table = read(lba * SECTOR, count * size)
        found = []
        for i in range(count):
            entry = table[i * size:i * size + 128]
            if len(entry) < 128 or entry[:16] == b"\0" * 16:
                continue
            first, last = struct.unpack_from("<QQ", entry, 32)
            found.append({"number": i + 1, "offset": first * SECTOR,
                          "size": (last - first + 1) * SECTOR,
                          "type": str(uuid.UUID(bytes_le=bytes(entry[:16])))})
        return found
    found = []
    for i, e in enumerate(entries):
        kind = e[4]
        start, count = struct.unpack_from("<II", e, 8)
        if kind == 0 or count == 0:
            continue
        if kind in MBR_EXTENDED:
            continue    # logical partitions are not searched; say so if nothing else is found
        found.append({"number": i + 1, "offset": start * SECTOR, "size": count * SECTOR,
                      "type": "0x%02x" % kind})
    return found


def build_root_partition(read, disk_size, machine="x86_64"):
    """{"offset", "size", "fstype", "number"} of the root filesystem of a disk.

    GPT: the partition typed Linux root for this architecture; else the single (or largest)
    partition holding a Linux filesystem. No table: the whole disk if it is a filesystem."""
    parts = build_partitions(read, disk_size)
    if not parts:
        fstype = build_fs_type(read, 0)
        if fstype is None:
            raise ImageError("disk has no partition table and no ext4/xfs/btrfs filesystem",
                             field="rootfs", hint="give a disk with a GPT/MBR Linux partition "
                             "or a bare filesystem image")
        return {"offset": 0, "size": disk_size, "fstype": fstype, "number": 0}
    for part in parts:
        if part["offset"] + part["size"] > disk_size:
            raise ImageError("partition %d ends beyond the end of the disk" % part["number"],
                             field="rootfs", hint="the disk image is truncated")
    root = GPT_ROOT.get(machine)
    for part in parts:
        if part["type"] == root:
            fstype = build_fs_type(read, part["offset"])
            if fstype:
                return dict(part, fstype=fstype)
    linux = []
    for part in parts:
        fstype = build_fs_type(read, part["offset"])
        if fstype:
            linux.append(dict(part, fstype=fstype))
    if not linux:
        raise ImageError("no partition holds an ext4/xfs/btrfs filesystem (partitions: %s)"
                         % ", ".join("%d type %s" % (p["number"], p["type"]) for p in parts),
                         field="rootfs", hint="logical MBR partitions and LVM are not supported")
    return max(linux, key=lambda p: p["size"])


def read_root_partition(path, machine=None):
    import platform
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size

        def read(offset, length):
            f.seek(offset)
            return f.read(length)
        return build_root_partition(read, size, machine or platform.machine())


def read_is_qcow2(path):
    with open(path, "rb") as f:
        return f.read(4) == QCOW2_MAGIC


def apply_qcow2_export(image, export_path, pid_path, writable=False):
    """Export a qcow2 image as a raw file at `export_path` with qemu-storage-daemon (FUSE).

    The nbd module is absent on this kind of host, so qemu-nbd cannot be used; a FUSE export is
    a plain file that losetup can back a loop device with."""
    import shutil
    import subprocess
    if not shutil.which("qemu-storage-daemon"):
        raise ImageError("%s is a qcow2 disk but qemu-storage-daemon is missing" % image,
                         field="rootfs", hint="apt-get install qemu-system-common")
    ro = "off" if writable else "on"
    with open(export_path, "w"):
        pass
    proc = subprocess.run(
        ["qemu-storage-daemon",
         "--blockdev", "driver=file,filename=%s,node-name=file,read-only=%s"
         % (image.replace(",", ",,"), ro),
         "--blockdev", "driver=qcow2,file=file,node-name=disk,read-only=%s" % ro,
         "--export", "type=fuse,id=export,node-name=disk,mountpoint=%s,writable=%s"
         % (export_path.replace(",", ",,"), "on" if writable else "off"),
         "--daemonize", "--pidfile", pid_path],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ImageError("cannot open qcow2 disk %s: %s" % (image, lines[-1] if lines else
                                                             "qemu-storage-daemon failed"),
                         field="rootfs", hint="check it with qemu-img check")
    with open(pid_path) as f:
        return int(f.read().strip())


def apply_loop_attach(path, offset, size, readonly=True):
    import subprocess
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size)]
    if readonly:
        argv.append("--read-only")
    proc = subprocess.run(argv + [path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise ImageError("cannot attach %s to a loop device: %s" % (path, proc.stderr.decode(
            errors="replace").strip()), field="rootfs", hint="check /dev/loop-control and losetup")
    return proc.stdout.decode().strip()


def apply_loop_detach(device):
    import subprocess
    subprocess.run(["losetup", "--detach", device], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def read_loop_backing(device):
    """The backing file of loop device /dev/loopN, or None when it is free."""
    name = os.path.basename(device)
    try:
        with open("/sys/block/%s/loop/backing_file" % name) as f:
            return f.read().strip()
    except OSError:
        return None


def read_pid_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def apply_stop_export(pid, export_path):
    """Stop the qemu-storage-daemon we started for `export_path` (checked by its command line,
    so a reused pid is never killed)."""
    import signal
    import time
    argv = read_pid_cmdline(pid)
    if not argv or not argv[0].endswith(b"qemu-storage-daemon") or \
            not any(export_path.encode() in a for a in argv):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 5
    while time.time() < deadline and read_pid_cmdline(pid):
        time.sleep(0.02)
    return True
