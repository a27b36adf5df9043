"""Root partition discovery on synthetic disks: GPT root type, largest Linux partition, MBR,
bare filesystems, and unsupported layouts (one ImageError line each)."""
import struct
import uuid

import pytest

from capsa.errors import ImageError
from capsa.engine.images.disk import GPT_LINUX_DATA, GPT_ROOT, build_root_partition

MB = 1 << 20


class Disk:
    def __init__(self, size):
        self.size = size
        self.chunks = {}

    def put(self, offset, data):
        self.chunks[offset] = data

    def read(self, offset, length):
        out = bytearray(length)
        for start, data in self.chunks.items():
            lo, hi = max(start, offset), min(start + len(data), offset + length)
            if lo < hi:
                out[lo - offset:hi - offset] = data[lo - start:hi - start]
        return bytes(out)

    def fs(self, offset, kind="ext4"):
        if kind == "ext4":
            self.put(offset + 1080, b"\x53\xef")
        elif kind == "xfs":
            self.put(offset, b"XFSB")


def mbr(parts):
    sector = bytearray(512)
    for i, (kind, start, count) in enumerate(parts):
        entry = bytearray(16)
        entry[4] = kind
        struct.pack_into("<II", entry, 8, start, count)
        sector[446 + 16 * i:462 + 16 * i] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def gpt(disk, parts):
    disk.put(0, mbr([(0xEE, 1, disk.size // 512 - 1)]))
    header = bytearray(92)
    header[:8] = b"EFI PART"
    struct.pack_into("<QII", header, 72, 2, 128, 128)
    disk.put(512, bytes(header))
    table = bytearray(128 * 128)
    for i, (type_guid, first, last) in enumerate(parts):
        table[i * 128:i * 128 + 16] = uuid.UUID(type_guid).bytes_le
        table[i * 128 + 16:i * 128 + 32] = uuid.uuid4().bytes_le
        struct.pack_into("<QQ", table, i * 128 + 32, first, last)
    disk.put(1024, bytes(table))


def test_gpt_root_type_wins_over_a_larger_data_partition():
    disk = Disk(100 * MB)
    gpt(disk, [(GPT_LINUX_DATA, 2048, 2048 + 60 * 2048 - 1), (GPT_ROOT["x86_64"], 62 * 2048,
                                                             62 * 2048 + 20 * 2048 - 1)])
    disk.fs(2048 * 512)
    disk.fs(62 * MB, "xfs")
    part = build_root_partition(disk.read, disk.size, "x86_64")
    assert part["number"] == 2 and part["fstype"] == "xfs" and part["offset"] == 62 * MB
    assert part["size"] == 20 * MB


def test_gpt_without_root_type_takes_the_largest_linux_filesystem():
    disk = Disk(100 * MB)
    esp = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    gpt(disk, [(esp, 2048, 4095), (GPT_LINUX_DATA, 4096, 4096 + 10 * 2048 - 1),
               (GPT_LINUX_DATA, 30 * 2048, 30 * 2048 + 50 * 2048 - 1)])
    disk.fs(4096 * 512)
    disk.fs(30 * MB)
    part = build_root_partition(disk.read, disk.size, "x86_64")
    assert part["number"] == 3 and part["size"] == 50 * MB


def test_mbr_single_linux_partition():
    disk = Disk(64 * MB)
    disk.put(0, mbr([(0x83, 2048, 40 * 2048)]))
    disk.fs(MB)
    assert build_root_partition(disk.read, disk.size)["offset"] == MB


def test_bare_filesystem():
    disk = Disk(8 * MB)
    disk.fs(0)
    assert build_root_partition(disk.read, disk.size) == {"offset": 0, "size": 8 * MB,
                                                          "fstype": "ext4", "number": 0}


@pytest.mark.parametrize("layout", ["empty", "no-fs", "extended", "beyond-end", "bad-gpt"])
def test_unsupported_layouts(layout):
    disk = Disk(64 * MB)
    if layout == "no-fs":
        disk.put(0, mbr([(0x83, 2048, 1000)]))
    elif layout == "extended":
        disk.put(0, mbr([(0x05, 2048, 40 * 2048)]))
        disk.fs(MB)
    elif layout == "beyond-end":
        disk.put(0, mbr([(0x83, 2048, 400 * 2048)]))
        disk.fs(MB)
    elif layout == "bad-gpt":
        disk.put(0, mbr([(0xEE, 1, 1000)]))
    with pytest.raises(ImageError) as err:
        build_root_partition(disk.read, disk.size)
    assert err.value.field == "rootfs" and "\n" not in err.value.line()
