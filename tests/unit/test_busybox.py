"""Unit tests of capsa.busybox: the embedded default image, built without root."""
import hashlib
import os
import stat
import subprocess
import tarfile

import pytest

from capsa import busybox
from capsa.busybox import (EPOCH, build_busybox_entries, build_busybox_rootfs, build_busybox_tar,
                           check_busybox_static, read_busybox_applets)
from capsa.errors import ImageError

needs_busybox = pytest.mark.skipif(not os.path.exists("/bin/busybox"),
                                   reason="host has no /bin/busybox (apt-get install busybox-static)")


def _listing(root):
    """(path, mode, uid, mtime, link target or sha256) of every entry under root, sorted."""
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                what = "-> " + os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()
            else:
                what = "dir"
            rows.append((os.path.relpath(full, root), st.st_mode, st.st_uid, st.st_mtime, what))
    return sorted(rows)


def test_entries_hold_folders_etc_files_and_one_link_per_applet():
    entries = build_busybox_entries(["bin/sh", "usr/bin/awk", "sbin/ip", "linuxrc", "bin/busybox",
                                     "usr/local/bin/x"])
    by_path = {e[0]: e for e in entries}
    assert [e[0] for e in entries] == sorted(by_path)
    assert by_path["tmp"][1:3] == ("dir", 0o1777)
    assert by_path["var/tmp"][1:3] == ("dir", 0o1777)
    assert by_path["root"][1:3] == ("dir", 0o700)
    assert by_path["proc"][1:3] == ("dir", 0o555)
    assert by_path["home/user"][3] == 1000
    for name in ("dev", "etc", "home", "run", "var", "sys"):
        assert by_path[name][1] == "dir"
    assert by_path["usr/local"][1:3] == ("dir", 0o755)
    assert by_path["bin/busybox"] == ("bin/busybox", "file", 0o755, 0, None)
    for applet in ("bin/sh", "usr/bin/awk", "sbin/ip", "linuxrc", "usr/local/bin/x"):
        kind, target = by_path[applet][1], by_path[applet][4]
        assert kind == "link" and not target.startswith("/")
        assert os.path.normpath(os.path.join(os.path.dirname(applet), target)) == "bin/busybox"


def test_etc_files_name_root_nobody_and_the_test_user():
    by_path = {e[0]: e for e in build_busybox_entries([])}
    passwd = by_path["etc/passwd"][4].decode().splitlines()
    users = {line.split(":")[0]: line.split(":") for line in passwd}
    assert users["root"][2:4] == ["0", "0"] and users["root"][5] == "/root"
    assert users["nobody"][2] == "65534"
    assert users["user"][2:4] == ["1000", "1000"] and users["user"][5] == "/home/user"
    groups = {line.split(":")[0]: line.split(":")[2]
              for line in by_path["etc/group"][4].decode().splitlines()}
    assert groups == {"root": "0", "tty": "5", "user": "1000", "nogroup": "65534"}
    assert b"localhost" in by_path["etc/hosts"][4]
    assert by_path["etc/hostname"][4] == b"capsa\n"


@pytest.mark.parametrize("bad", ["../etc/x", "bin/../../x", "bin//sh", "./sh", ""])
def test_entries_refuse_applet_paths_that_leave_the_tree(bad):
    with pytest.raises(ImageError):
        build_busybox_entries(["bin/sh", bad])


def test_entries_refuse_an_applet_that_collides_with_a_file():
    with pytest.raises(ImageError, match="collides"):
        build_busybox_entries(["etc/passwd/x"])


def test_missing_and_dynamic_busybox_are_refused(tmp_path):
    with pytest.raises(ImageError, match="not found.*busybox-static"):
        check_busybox_static(str(tmp_path / "nope"))
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ImageError, match="not a 64-bit"):
        check_busybox_static(str(script))
    with pytest.raises(ImageError, match="dynamically linked"):
        check_busybox_static("/usr/bin/env")
    dest = tmp_path / "rootfs"
    with pytest.raises(ImageError):
        build_busybox_rootfs(str(dest), busybox="/usr/bin/env")
    assert os.listdir(tmp_path) == ["script"]


@needs_busybox
def test_applets_come_from_the_binary():
    applets = read_busybox_applets()
    assert "bin/sh" in applets and len(applets) > 100
    expected = subprocess.run(["/bin/busybox", "--list-full"], stdout=subprocess.PIPE,
                              check=True).stdout.decode().split()
    assert applets == expected


@needs_busybox
def test_rootfs_has_every_applet_and_runs_them(tmp_path):
    root = build_busybox_rootfs(str(tmp_path / "rootfs"))
    assert root == str(tmp_path / "rootfs")
    for applet in read_busybox_applets():
        path = os.path.join(root, applet)
        assert os.path.realpath(path) == os.path.join(root, "bin/busybox"), applet
    st = os.stat(os.path.join(root, "tmp"))
    assert stat.S_IMODE(st.st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(os.path.join(root, "bin/busybox")).st_mode) == 0o755
    with open("/bin/busybox", "rb") as a, open(os.path.join(root, "bin/busybox"), "rb") as b:
        assert a.read() == b.read()
    # the static binary runs from the tree and dispatches on the link's name
    out = subprocess.run([os.path.join(root, "usr/bin/awk"), "BEGIN{print 6*7}"],
                         stdout=subprocess.PIPE, check=True).stdout
    assert out == b"42\n"
    assert sorted(os.listdir(tmp_path)) == ["rootfs"]


@needs_busybox
def test_rootfs_is_the_same_tree_every_time_whatever_the_umask(tmp_path):
    first = build_busybox_rootfs(str(tmp_path / "a"))
    old = os.umask(0o077)
    try:
        second = build_busybox_rootfs(str(tmp_path / "b"))
    finally:
        os.umask(old)
    assert _listing(first) == _listing(second)
    assert os.lstat(first).st_mtime == EPOCH
    assert all(row[3] == EPOCH for row in _listing(first))


@needs_busybox
def test_existing_tree_is_kept_unless_replace(tmp_path):
    dest = tmp_path / "rootfs"
    dest.mkdir()
    build_busybox_rootfs(str(dest))  # an empty folder is taken
    (dest / "etc" / "marker").write_text("mine")
    with pytest.raises(ImageError, match="not an empty folder"):
        build_busybox_rootfs(str(dest))
    assert (dest / "etc" / "marker").read_text() == "mine"
    build_busybox_rootfs(str(dest), replace=True)
    assert not (dest / "etc" / "marker").exists()
    assert (dest / "bin" / "busybox").exists()
    assert sorted(os.listdir(tmp_path)) == ["rootfs"]


@needs_busybox
def test_failure_half_way_leaves_nothing_and_keeps_the_old_tree(tmp_path, monkeypatch):
    dest = tmp_path / "rootfs"
    build_busybox_rootfs(str(dest))
    before = _listing(str(dest))

    def broken_copy(source, fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(busybox, "_copy_into", broken_copy)
    with pytest.raises(ImageError, match="No space left"):
        build_busybox_rootfs(str(dest), replace=True)
    with pytest.raises(ImageError, match="No space left"):
        build_busybox_rootfs(str(tmp_path / "fresh"))
    assert sorted(os.listdir(tmp_path)) == ["rootfs"]
    assert _listing(str(dest)) == before


@needs_busybox
def test_tarball_is_byte_identical_and_matches_the_folder(tmp_path):
    one = build_busybox_tar(str(tmp_path / "one.tar"))
    two = build_busybox_tar(str(tmp_path / "two.tar"))
    with open(one, "rb") as a, open(two, "rb") as b:
        assert a.read() == b.read()
    root = build_busybox_rootfs(str(tmp_path / "rootfs"))
    with tarfile.open(one) as tar:
        members = tar.getmembers()
        body = tar.extractfile("bin/busybox").read()
    with open("/bin/busybox", "rb") as f:
        assert body == f.read()
    owners = {m.name: (m.uid, m.gid) for m in members}
    assert owners["home/user"] == (1000, 1000)
    assert {v for k, v in owners.items() if k != "home/user"} == {(0, 0)}
    assert all(m.mtime == EPOCH for m in members)
    from_tar = sorted((m.name, m.mode, m.linkname if m.issym() else m.isdir()) for m in members)
    from_dir = sorted((row[0], stat.S_IMODE(row[1]),
                       row[4][3:] if row[4].startswith("-> ") else row[4] == "dir")
                      for row in _listing(root))
    assert from_tar == from_dir
    assert sorted(os.listdir(tmp_path)) == ["one.tar", "rootfs", "two.tar"]


def test_tarball_failure_leaves_nothing(tmp_path):
    with pytest.raises(ImageError):
        build_busybox_tar(str(tmp_path / "missing-dir" / "x.tar"))
    with pytest.raises(ImageError):
        build_busybox_tar(str(tmp_path / "x.tar"), busybox=str(tmp_path / "nope"))
    assert os.listdir(tmp_path) == []


@needs_busybox
def test_module_command_line(tmp_path, capsys):
    assert busybox.main([str(tmp_path / "r")]) == 0
    assert os.path.islink(tmp_path / "r" / "bin" / "sh")
    assert busybox.main([str(tmp_path / "r")]) == 1
    assert "not an empty folder" in capsys.readouterr().err
    assert busybox.main([str(tmp_path / "r.tar"), "--tar"]) == 0
    assert tarfile.is_tarfile(tmp_path / "r.tar")
    assert busybox.main(["--bogus"]) == 2
    assert busybox.main([]) == 2


@needs_busybox
def test_unwritable_place_and_symlinked_dest(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ImageError, match="cannot write"):
        build_busybox_rootfs(str(blocker / "rootfs"))
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ImageError, match="not an empty folder"):
        build_busybox_rootfs(str(link))
    build_busybox_rootfs(str(link), replace=True)
    assert not link.is_symlink() and (link / "bin" / "busybox").is_file()
    assert target.is_dir() and sorted(os.listdir(tmp_path)) == ["elsewhere", "file", "link"]
