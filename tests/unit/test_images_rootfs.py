"""Container rootfs preparation against FakeKernel: overlay options and order, read-only,
fsconfig path for long layer lists, folders, tarballs, release and stale cleanup."""
import io
import json
import os
import tarfile

import pytest

from capsa.errors import ImageError
from capsa.syscalls.fake import FakeKernel
from capsa.engine.images.rootfs import (MS_RDONLY, apply_clean_stale, apply_container_rootfs,
                                        apply_release_rootfs, build_overlay_options,
                                        build_rootfs_kind)
from capsa.engine.images.store import ImageStore


def make_image(store, tmp_path, name="bb"):
    tar = tmp_path / (name + ".tar")
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("etc/os")
        info.size = 3
        t.addfile(info, io.BytesIO(b"os\n"))
    return store.import_rootfs(str(tar), name)


def release_mounted(monkeypatch, kernel, container, rootfs):
    """apply_release_rootfs with `rootfs` shown as mounted until FakeKernel unmounts it."""
    mounted = {rootfs}
    monkeypatch.setattr("capsa.engine.images.rootfs.read_mountpoints", lambda: set(mounted))
    kernel.returns["umount2"] = lambda args: mounted.discard(args[0])
    apply_release_rootfs(container, kernel=kernel)
    assert kernel.calls_of("umount2") == [(rootfs, 0)]


def test_overlay_options_put_the_top_layer_first():
    assert build_overlay_options(["/l/bottom", "/l/top"], "/c/upper", "/c/work") == \
        "lowerdir=/l/top:/l/bottom,upperdir=/c/upper,workdir=/c/work"
    with pytest.raises(ImageError):
        build_overlay_options(["/l/a,b"], "/u", "/w")


def test_kinds(tmp_path, monkeypatch):
    (tmp_path / "dir").mkdir()
    (tmp_path / "r.tar.gz").write_bytes(b"x")
    (tmp_path / "d.img").write_bytes(b"x")
    (tmp_path / "noext").write_bytes(b"QFI\xfb....")
    assert build_rootfs_kind(str(tmp_path / "dir")) == "folder"
    assert build_rootfs_kind(str(tmp_path / "r.tar.gz")) == "tar"
    assert build_rootfs_kind(str(tmp_path / "d.img")) == "disk"
    assert build_rootfs_kind(str(tmp_path / "noext")) == "disk"
    assert build_rootfs_kind("busybox") == "image"
    assert build_rootfs_kind("127.0.0.1:5000/bb:v1") == "image"
    (tmp_path / "localhost").mkdir()
    (tmp_path / "localhost" / "bb").mkdir()
    monkeypatch.chdir(tmp_path)
    assert build_rootfs_kind("noext") == "image"
    assert build_rootfs_kind("localhost/bb") == "image"
    assert build_rootfs_kind("./noext") == "disk"
    with pytest.raises(ImageError):
        build_rootfs_kind(str(tmp_path / "missing"))


@pytest.mark.parametrize("readonly", [False, True])
def test_image_rootfs_is_an_overlay_and_release_undoes_it(tmp_path, readonly, monkeypatch):
    store = ImageStore(str(tmp_path / "store"))
    image = make_image(store, tmp_path)
    kernel = FakeKernel()
    container = str(tmp_path / "c1")
    rootfs = apply_container_rootfs(store, container, "bb", readonly=readonly, kernel=kernel)
    assert rootfs == container + "/rootfs"
    (source, target, fstype, flags, data), = kernel.calls_of("mount")
    assert (source, target, fstype) == ("overlay", rootfs, "overlay")
    assert flags == (MS_RDONLY if readonly else 0)
    assert data == build_overlay_options(store.resolve("bb")["layer_dirs"], container + "/upper",
                                         container + "/work")
    assert store.users(image) == [container]
    with pytest.raises(ImageError):
        store.remove("bb")
    release_mounted(monkeypatch, kernel, container, rootfs)
    assert store.users(image) == []
    assert os.listdir(container) == []
    assert os.listdir(store.path("attachments")) == []
    apply_release_rootfs(container, kernel=kernel)       # idempotent


def test_long_layer_lists_use_fsconfig_lowerdir_plus(tmp_path, monkeypatch):
    kernel = FakeKernel()
    store = ImageStore(str(tmp_path / "store"))
    make_image(store, tmp_path)
    layers = ["/var/lib/capsa/images/layers/" + ("%064x" % i) for i in range(80)]
    real = store.resolve

    def resolve(ref):
        record = real(ref)
        record["layer_dirs"] = layers
        return record
    monkeypatch.setattr(store, "resolve", resolve)
    apply_container_rootfs(store, str(tmp_path / "c"), "bb", kernel=kernel)
    assert kernel.calls_of("mount") == []
    lowers = [c[3] for c in kernel.calls_of("fsconfig") if len(c) > 3 and c[2] == "lowerdir+"]
    assert lowers == list(reversed(layers))
    assert len(kernel.calls_of("move_mount")) == 1


def test_failed_mount_leaves_nothing(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    image = make_image(store, tmp_path)
    kernel = FakeKernel()
    kernel.failures["mount"] = 22
    container = tmp_path / "c"
    with pytest.raises(Exception):
        apply_container_rootfs(store, str(container), "bb", kernel=kernel)
    assert os.listdir(container) == []
    assert store.users(image) == []
    assert os.listdir(store.path("attachments")) == []


def test_missing_image_is_an_image_error_and_leaves_nothing(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    container = tmp_path / "c"
    with pytest.raises(ImageError):
        apply_container_rootfs(store, str(container), "nothing", kernel=FakeKernel())
    assert os.listdir(container) == []


def test_folder_and_tarball(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    kernel = FakeKernel()
    assert apply_container_rootfs(str(tmp_path / "s"), str(tmp_path / "c1"), str(folder),
                                  kernel=kernel) == str(folder)
    tar = tmp_path / "r.tar"
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("hello")
        info.size = 2
        t.addfile(info, io.BytesIO(b"hi"))
    rootfs = apply_container_rootfs(str(tmp_path / "s"), str(tmp_path / "c2"), str(tar),
                                    kernel=kernel)
    assert open(os.path.join(rootfs, "hello")).read() == "hi"
    assert kernel.calls == []
    apply_release_rootfs(str(tmp_path / "c2"), kernel=kernel)
    assert not os.path.exists(rootfs)
    apply_release_rootfs(str(tmp_path / "c1"), kernel=kernel)
    assert folder.is_dir()


def test_stale_attachments_of_deleted_containers_are_cleaned(tmp_path, monkeypatch):
    import shutil
    store = ImageStore(str(tmp_path / "store"))
    image = make_image(store, tmp_path)
    kernel = FakeKernel()
    live, dead = str(tmp_path / "live"), str(tmp_path / "dead")
    apply_container_rootfs(store, live, "bb", kernel=kernel)
    apply_container_rootfs(store, dead, "bb", kernel=kernel)
    shutil.rmtree(dead)
    mounted = {dead + "/rootfs", live + "/rootfs"}
    monkeypatch.setattr("capsa.engine.images.rootfs.read_mountpoints", lambda: set(mounted))
    kernel.returns["umount2"] = lambda args: mounted.discard(args[0])
    assert apply_clean_stale(store.root, kernel=kernel) == [dead]
    assert kernel.calls_of("umount2") == [(dead + "/rootfs", 0)]
    assert store.users(image) == [live]
    assert len(os.listdir(store.path("attachments"))) == 1
    with open(os.path.join(store.path("attachments"), os.listdir(store.path("attachments"))[0])) as f:
        assert json.load(f)["container_dir"] == live


def test_folders_with_a_mount_left_below_are_not_removed(tmp_path, monkeypatch):
    store = ImageStore(str(tmp_path / "store"))
    make_image(store, tmp_path)
    kernel = FakeKernel()
    container = str(tmp_path / "c")
    rootfs = apply_container_rootfs(store, container, "bb", kernel=kernel)
    open(os.path.join(container, "upper", "precious"), "w").close()
    kernel.failures["umount2"] = 16
    monkeypatch.setattr("capsa.engine.images.rootfs.read_mountpoints", lambda: {rootfs})
    with pytest.raises(ImageError) as err:
        apply_release_rootfs(container, kernel=kernel)
    assert "could not release" in err.value.line() and "busy" in err.value.line()
    assert os.path.exists(os.path.join(container, "upper", "precious"))
    assert os.path.exists(os.path.join(container, "rootfs.json"))
