"""`capsa cp` against a hostile rootfs: copies go fd by fd, symlinks are never followed onto
the host (no root needed)."""
import os

import pytest

from capsa.errors import UsageError
from capsa.engine.rootfscopy import apply_copy_in, apply_copy_out


@pytest.fixture
def rootfs(tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("inside\n")
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "sub" / "f").write_text("nested\n")
    os.symlink("/etc/motd", root / "data" / "abs-link")
    return root


def test_copy_out_file_dir_and_links_as_links(rootfs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    apply_copy_out(str(rootfs), "/etc/motd", str(out))
    assert (out / "motd").read_text() == "inside\n"
    apply_copy_out(str(rootfs), "/data", str(out / "copy"))
    assert (out / "copy" / "sub" / "f").read_text() == "nested\n"
    assert os.readlink(out / "copy" / "abs-link") == "/etc/motd"


def test_copy_out_refuses_symlinked_folders_and_dotdot(rootfs, tmp_path):
    host_secret = tmp_path / "secret"
    host_secret.mkdir()
    (host_secret / "key").write_text("host only\n")
    os.symlink(str(host_secret), rootfs / "escape")
    with pytest.raises(UsageError):
        apply_copy_out(str(rootfs), "/escape/key", str(tmp_path / "stolen"))
    with pytest.raises(UsageError):
        apply_copy_out(str(rootfs), "/../secret/key", str(tmp_path / "stolen"))
    assert not (tmp_path / "stolen").exists()
    with pytest.raises(UsageError):
        apply_copy_out(str(rootfs), "/nope", str(tmp_path / "x"))


def test_copy_in_file_into_folder_and_tree(rootfs, tmp_path):
    src = tmp_path / "up.txt"
    src.write_text("uploaded\n")
    apply_copy_in(str(src), str(rootfs), "/etc")
    assert (rootfs / "etc" / "up.txt").read_text() == "uploaded\n"
    apply_copy_in(str(src), str(rootfs), "/etc/renamed")
    assert (rootfs / "etc" / "renamed").read_text() == "uploaded\n"
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "b").write_text("b\n")
    apply_copy_in(str(tree), str(rootfs), "/data")
    assert (rootfs / "data" / "tree" / "a" / "b").read_text() == "b\n"


def test_copy_in_never_writes_through_a_planted_symlink(rootfs, tmp_path):
    victim = tmp_path / "host-file"
    victim.write_text("untouched\n")
    os.symlink(str(victim), rootfs / "etc" / "trap")
    os.symlink(str(tmp_path), rootfs / "hostdir")
    src = tmp_path / "payload"
    src.write_text("evil\n")
    with pytest.raises(UsageError):
        apply_copy_in(str(src), str(rootfs), "/etc/trap")
    with pytest.raises(UsageError):
        apply_copy_in(str(src), str(rootfs), "/hostdir/payload2")
    assert victim.read_text() == "untouched\n"
    assert not (tmp_path / "payload2").exists()
