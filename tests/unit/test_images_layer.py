"""Layer unpacking without root: paths, escapes, hard links, replacement, compression, diff_id.
(Whiteouts, device nodes and ownership need root: tests/integration/test_images_layers.py.)"""
import gzip
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tarfile

import pytest

from capsa.errors import ImageError
from capsa.engine.images.layer import (DecompressedFile, HashingReader, apply_unpack_layer,
                                       build_entry_path, read_compression)


def make_tar(entries):
    """entries: (name, kind, extra) with kind file/dir/symlink/link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            if kind == "file":
                data = extra.encode() if isinstance(extra, str) else extra
                info.size = len(data)
                info.mode = 0o640
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, extra or 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            tar.addfile(info)
    return buf.getvalue()


def unpack(tmp_path, entries, overlay=True):
    dest = tmp_path / "layer"
    dest.mkdir(exist_ok=True)
    apply_unpack_layer(io.BytesIO(make_tar(entries)), str(dest), overlay)
    return dest


def test_entry_paths():
    assert build_entry_path("./a//b/") == "a/b"
    assert build_entry_path("/etc/passwd") == "etc/passwd"
    assert build_entry_path(".") == ""
    with pytest.raises(ImageError):
        build_entry_path("a/../../etc")


def test_files_dirs_links_modes_and_times(tmp_path):
    dest = unpack(tmp_path, [("etc/", "dir", 0o750), ("etc/hosts", "file", "127.0.0.1 x\n"),
                             ("bin/sh", "symlink", "/bin/busybox"),
                             ("etc/hosts2", "link", "etc/hosts"), ("deep/a/b/c", "file", "c")])
    assert (dest / "etc/hosts").read_text() == "127.0.0.1 x\n"
    assert os.stat(dest / "etc").st_mode & 0o7777 == 0o750
    assert os.stat(dest / "etc/hosts").st_mode & 0o7777 == 0o640
    assert os.readlink(dest / "bin/sh") == "/bin/busybox"
    assert os.stat(dest / "etc/hosts").st_ino == os.stat(dest / "etc/hosts2").st_ino
    assert os.stat(dest / "etc").st_mtime == 1700000000
    assert (dest / "deep/a/b/c").read_text() == "c"


@pytest.mark.parametrize("entries", [
    [("../evil", "file", "x")],
    [("a/../../evil", "file", "x")],
    [("link", "symlink", "/etc"), ("link/passwd", "file", "x")],
    [("link", "symlink", "../../.."), ("link/tmp/evil", "file", "x")],
    [("file", "file", "x"), ("file/child", "file", "y")],
    [("h", "link", "../../etc/passwd")],
    [("l", "symlink", "/etc"), ("h", "link", "l/passwd")],
    [("h", "link", "missing")],
])
def test_escapes_are_refused(tmp_path, entries):
    outside = tmp_path / "etc"
    with pytest.raises(ImageError) as err:
        unpack(tmp_path, entries)
    assert err.value.field == "layer"
    assert not (tmp_path / "evil").exists() and not outside.exists()


def test_later_entry_replaces_earlier_and_dir_cache_is_invalidated(tmp_path):
    dest = unpack(tmp_path, [("a/x", "file", "1"), ("a", "file", "now a file"),
                             ("a", "dir", 0o755), ("a/y", "file", "2")])
    assert sorted(os.listdir(dest / "a")) == ["y"]
    with pytest.raises(ImageError):
        unpack(tmp_path, [("d/x", "file", "1"), ("d", "symlink", "/tmp"), ("d/y", "file", "2")])


def test_overlay_control_xattrs_in_a_layer_are_dropped(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("d")
        info.type = tarfile.DIRTYPE
        info.pax_headers = {"SCHILY.xattr.trusted.overlay.redirect": "/etc",
                            "SCHILY.xattr.user.note": "kept"}
        tar.addfile(info)
    dest = tmp_path / "l"
    dest.mkdir()
    apply_unpack_layer(io.BytesIO(buf.getvalue()), str(dest))
    names = os.listxattr(dest / "d")
    assert "trusted.overlay.redirect" not in names
    assert os.getxattr(dest / "d", "user.note") == b"kept"


def test_broken_tar_is_an_image_error(tmp_path):
    data = make_tar([("a", "file", "x" * 5000)])
    dest = tmp_path / "l"
    dest.mkdir()
    with pytest.raises(ImageError) as err:
        apply_unpack_layer(io.BytesIO(data[:1500]), str(dest))
    assert "\n" not in err.value.line()
    with pytest.raises(ImageError):
        apply_unpack_layer(io.BytesIO(b"not a tar at all" * 100), str(dest))


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", None])
def test_compression_detection_and_diff_id(tmp_path, kind):
    plain = make_tar([("f", "file", "hello")])
    path = tmp_path / "blob"
    if kind == "gzip":
        path.write_bytes(gzip.compress(plain))
    elif kind == "xz":
        path.write_bytes(lzma.compress(plain))
    elif kind == "zstd":
        if not shutil.which("zstd"):
            pytest.skip("zstd command missing on this host")
        path.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=plain, check=True,
                                        stdout=subprocess.PIPE).stdout)
    else:
        path.write_bytes(plain)
    assert read_compression(str(path)) == kind
    dest = tmp_path / "l"
    dest.mkdir()
    with DecompressedFile(str(path)) as raw:
        reader = HashingReader(raw)
        apply_unpack_layer(reader, str(dest))
        assert reader.drain() == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert (dest / "f").read_text() == "hello"


def test_corrupt_gzip_is_an_image_error(tmp_path):
    path = tmp_path / "blob"
    data = gzip.compress(make_tar([("f", "file", os.urandom(20000))]))
    path.write_bytes(data[:len(data) // 2] + b"\0" * 100)
    dest = tmp_path / "l"
    dest.mkdir()
    with pytest.raises(ImageError):
        with DecompressedFile(str(path)) as raw:
            apply_unpack_layer(raw, str(dest))


def test_folder_replaced_by_symlink_does_not_pass_its_mode_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    os.chmod(outside, 0o700)
    dest = unpack(tmp_path, [("d", "dir", 0o777), ("d", "symlink", str(outside))])
    assert os.readlink(dest / "d") == str(outside)
    assert os.stat(outside).st_mode & 0o7777 == 0o700
