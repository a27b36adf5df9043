"""The image store without root: rootfs import, tags and lookup, users, rmi/prune and garbage
collection, archives round-trip, digest mismatches and interrupted imports leaving nothing."""
import io
import json
import os
import tarfile
import threading

import pytest

from capsa.errors import ImageError
from capsa.engine.images import layer as layer_mod
from capsa.engine.images.store import ImageStore, build_store_name


def write_rootfs_tar(path, files):
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "store"))


@pytest.fixture
def image(store, tmp_path):
    tar = write_rootfs_tar(tmp_path / "rootfs.tar", {"bin/sh": b"#!fake\n", "etc/os": b"test\n"})
    return store.import_rootfs(tar, "bb", {"Cmd": ["/bin/sh"]})


def store_files(store):
    found = []
    for dirpath, dirs, files in os.walk(store.dir):
        for name in files:
            found.append(os.path.relpath(os.path.join(dirpath, name), store.dir))
    return sorted(f for f in found if not f.startswith("locks/"))


def test_store_name():
    assert build_store_name("bb") == "localhost/bb:latest"
    assert build_store_name("docker.io/x/y:1") == "docker.io/x/y:1"


def test_import_rootfs_and_resolve(store, image):
    record = store.resolve("bb")
    assert record["id"] == image
    assert record["names"] == ["localhost/bb:latest"]
    assert record["config"]["Cmd"] == ["/bin/sh"]
    assert record["config"]["Env"][0].startswith("PATH=")
    assert open(os.path.join(record["layer_dirs"][0], "etc/os")).read() == "test\n"
    # the image id is the config digest, and the config names the layer's diff_id
    with open(store.blob_path(image), "rb") as f:
        assert json.load(f)["rootfs"]["diff_ids"] == [record["layers"][0]["diff_id"]]
    assert store.resolve(image[7:19])["id"] == image
    assert store.resolve("localhost/bb")["id"] == image


def test_import_folder(store, tmp_path):
    root = tmp_path / "folder"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("box\n")
    os.symlink("/etc/hostname", root / "link")
    record = store.resolve(store.import_rootfs(str(root), "folder:v1"))
    assert record["names"] == ["localhost/folder:v1"]
    assert os.readlink(os.path.join(record["layer_dirs"][0], "link")) == "/etc/hostname"


def test_missing_image_and_bad_rootfs(store, tmp_path):
    with pytest.raises(ImageError) as err:
        store.resolve("nothing")
    assert "not in the store" in err.value.line()
    with pytest.raises(ImageError):
        store.import_rootfs(str(tmp_path / "absent.tar"), "x")
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage" * 20)
    with pytest.raises(ImageError):
        store.import_rootfs(str(broken), "x")
    assert store.list() == []
    assert [f for f in store_files(store) if not f.startswith("tmp/")] == []


def test_tag_untag_and_remove(store, image):
    assert store.tag("bb", "other:v2") == "localhost/other:v2"
    assert store.resolve("other:v2")["id"] == image
    result = store.remove("other:v2")
    assert result == {"untagged": ["localhost/other:v2"], "deleted": []}
    result = store.remove("bb")
    assert result["deleted"] == [image]
    assert store.list() == []
    assert [f for f in store_files(store) if f != "tags.json"] == []
    assert os.listdir(store.path("layers")) == []


def test_image_in_use_is_kept(store, image, tmp_path):
    container = tmp_path / "c1"
    container.mkdir()
    store.add_user(image, str(container))
    with pytest.raises(ImageError) as err:
        store.remove("bb")
    assert "used by 1 container" in err.value.line()
    assert store.prune(all_images=True)["deleted"] == []
    store.remove_user(image, str(container))
    assert store.prune(all_images=True)["deleted"] == [image]


def test_users_of_deleted_container_folders_are_dropped(store, image, tmp_path):
    container = tmp_path / "gone"
    container.mkdir()
    store.add_user(image, str(container))
    container.rmdir()
    assert store.users(image) == []
    assert store.remove("bb")["deleted"] == [image]


def test_prune_removes_dangling_only_and_shared_layers_survive(store, image, tmp_path):
    tar = write_rootfs_tar(tmp_path / "r2.tar", {"bin/sh": b"#!fake\n", "etc/os": b"test\n"})
    second = store.import_rootfs(tar, "bb2", {"Cmd": ["/bin/echo"]})
    assert second != image
    # same tar content: one layer folder shared by both images
    assert store.resolve("bb")["layer_dirs"] == store.resolve("bb2")["layer_dirs"]
    store.remove("bb2")
    assert os.path.isdir(store.resolve("bb")["layer_dirs"][0])
    store.tag("bb", "keep")
    store.remove("localhost/bb:latest")
    assert store.prune()["deleted"] == []
    with store.lock("meta"):
        tags = store.read_tags()
    assert list(tags) == ["localhost/keep:latest"]


class FlakySource:
    """A source that stops after `fail_after` bytes of the layer blob, like a dropped link."""

    parallel = False

    def __init__(self, inner, fail_after=None, corrupt=False):
        self.inner = inner
        self.fail_after = fail_after
        self.corrupt = corrupt

    def describe(self):
        return "flaky"

    def read_manifest(self, digest=None):
        return self.inner.read_manifest(digest)

    def fetch_blob(self, digest, size, dest, progress=None):
        self.inner.fetch_blob(digest, size, dest, progress)
        if self.corrupt and size and size > 1000:
            with open(dest, "r+b") as f:
                f.seek(700)
                f.write(b"X")
        if self.fail_after is not None and size and size > 1000:
            with open(dest, "r+b") as f:
                f.truncate(self.fail_after)
            raise ImageError("connection dropped", field="registry")


def saved_layout_source(store, image, tmp_path):
    from capsa.engine.images.archive import build_source
    path = str(tmp_path / "o.tar")
    store.save([image], path, "oci-archive")
    return build_source("oci-archive:" + path)[0]


def test_interrupted_and_corrupt_imports_leave_nothing_trusted(store, image, tmp_path):
    other = ImageStore(str(tmp_path / "other"))
    source = saved_layout_source(store, image, tmp_path)
    with pytest.raises(ImageError):
        other.commit(FlakySource(source, fail_after=600), ["localhost/x:1"])
    assert other.list() == [] and os.listdir(other.path("layers")) == []
    assert len(os.listdir(other.path("blobs", "sha256"))) == 1   # only the verified config
    with pytest.raises(ImageError) as err:
        other.commit(FlakySource(source, corrupt=True), ["localhost/x:1"])
    assert "digest mismatch" in err.value.line()
    assert other.list() == [] and os.listdir(other.path("layers")) == []
    assert other.commit(source, ["localhost/x:1"]) == image
    assert other.prune()["deleted"] == []
    assert other.resolve("x:1")["id"] == image


def test_concurrent_commits_unpack_a_layer_once(store, image, tmp_path, monkeypatch):
    other = ImageStore(str(tmp_path / "other"))
    source = saved_layout_source(store, image, tmp_path)
    calls = []
    real = layer_mod.apply_unpack_layer

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)
    monkeypatch.setattr(layer_mod, "apply_unpack_layer", counting)
    from capsa.engine.images.archive import build_source
    sources = [build_source("oci-archive:" + str(tmp_path / "o.tar"))[0] for _ in range(4)]
    errors = []

    def run(src, n):
        try:
            other.commit(src, ["localhost/c:%d" % n])
        except Exception as exc:       # reported below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(s, n)) for n, s in enumerate(sources)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(calls) == 1
    assert [n for n in os.listdir(other.path("layers")) if n.startswith(".tmp")] == []


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_save_and_load_round_trip(store, image, tmp_path, fmt):
    path = str(tmp_path / ("out-" + fmt + ".tar"))
    store.save(["bb"], path, fmt)
    other = ImageStore(str(tmp_path / ("o-" + fmt)))
    assert other.load(path) == image
    assert other.resolve("bb")["names"] == ["localhost/bb:latest"]
    assert other.resolve("bb")["config"]["Cmd"] == ["/bin/sh"]


def test_oci_layout_directory_and_names(store, image, tmp_path):
    path = str(tmp_path / "o.tar")
    store.save(["bb"], path, "oci-archive")
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(path) as tar:
        tar.extractall(layout)
    other = ImageStore(str(tmp_path / "o"))
    assert other.import_transport("oci:%s:localhost/bb:latest" % layout) == image
    with pytest.raises(ImageError) as err:
        other.import_transport("oci:%s:nope" % layout)
    assert "localhost/bb:latest" in err.value.line()
    other.import_transport("oci:%s" % layout, name="renamed:1")
    assert other.resolve("renamed:1")["id"] == image


@pytest.mark.parametrize("content", [b"", b"garbage" * 100])
def test_broken_archives(store, tmp_path, content):
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    for transport in ("docker-archive", "oci-archive"):
        with pytest.raises(ImageError) as err:
            store.import_transport("%s:%s" % (transport, path))
        assert "\n" not in err.value.line()
    with pytest.raises(ImageError):
        store.load(str(path))
    with pytest.raises(ImageError):
        store.import_transport("oci:%s" % (tmp_path / "missing"))
    assert store.list() == []


def test_archive_with_tampered_layer_is_refused(store, image, tmp_path):
    path = str(tmp_path / "o.tar")
    store.save(["bb"], path, "oci-archive")
    layer = store.resolve("bb")["layers"][0]["digest"].partition(":")[2]
    rebuilt = str(tmp_path / "tampered.tar")
    with tarfile.open(path) as src, tarfile.open(rebuilt, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith(layer):
                data = data[:-1] + b"!"
            dst.addfile(member, io.BytesIO(data))
    other = ImageStore(str(tmp_path / "o"))
    with pytest.raises(ImageError) as err:
        other.load(rebuilt)
    assert "digest mismatch" in err.value.line()
    assert other.list() == []
