"""`run`/`create` given an image transport (oci:, oci-archive:, docker-archive:, docker://),
without root: how IMAGE is read, the name and id it gets (those of `pull`), reuse of stored
blobs and layers on a second run, --pull for file transports, and bad input leaving nothing."""
import io
import os
import tarfile
import types

import pytest

from capsa.errors import ImageError
from capsa.engine import prepare
from capsa.engine.images import layer as layer_mod
from capsa.engine.images.reference import build_run_image
from capsa.engine.images.store import ImageStore
from tests.unit.test_images_store import write_rootfs_tar

DIGEST = "sha256:" + "b" * 64


@pytest.mark.parametrize("text, kind, path, name", [
    ("oci:/l", "file", "/l", None),
    ("oci:/l:v1", "file", "/l", "v1"),
    ("oci:rel/l:v1", "file", "rel/l", "v1"),
    ("oci-archive:/o.tar:localhost/bb:oa", "file", "/o.tar", "localhost/bb:oa"),
    ("docker-archive:/d.tar", "file", "/d.tar", None),
    ("dir:/d", "file", "/d", None),
])
def test_file_transports_are_read_from_their_path(text, kind, path, name):
    ref = build_run_image(text)
    assert (ref["kind"], ref["path"], ref["name"]) == (kind, path, name)
    assert ref["transport"] == text.partition(":")[0]


def test_docker_transport_is_a_registry_reference():
    ref = build_run_image("docker://127.0.0.1:5000/bb:v1")
    assert ref["kind"] == "registry"
    assert (ref["registry"], ref["repository"], ref["tag"]) == ("127.0.0.1:5000", "bb", "v1")


@pytest.mark.parametrize("text", ["busybox", "localhost/bb:1", "docker:latest", "docker.io/x/y",
                                  "127.0.0.1:5000/bb:v1", DIGEST, "bbbbbbbbbbbb",
                                  "bb@" + DIGEST, "ocifoo:1"])
def test_names_and_ids_are_looked_up_in_the_store(text):
    assert build_run_image(text) == {"kind": "stored"}


@pytest.mark.parametrize("text", ["/srv/rootfs", "./rootfs", "../r.tar", "~/disk.qcow2", "."])
def test_a_bare_path_is_not_an_image_and_the_hint_names_rootfs(text):
    with pytest.raises(ImageError) as err:
        build_run_image(text)
    line = err.value.line()
    assert "--rootfs " + text in line and "oci:" + text in line and "\n" not in line


@pytest.mark.parametrize("text", ["", "oci:", "dir:/d:name", "docker://Bad"])
def test_bad_references_are_refused(text):
    with pytest.raises(ImageError):
        build_run_image(text)


# ---- read_or_pull_image against a store in a tmp folder -----------------------------------------
@pytest.fixture
def made(tmp_path):
    """An image saved as oci-archive, docker-archive and an OCI layout folder; its id."""
    src = ImageStore(str(tmp_path / "src"))
    tar = write_rootfs_tar(tmp_path / "rootfs.tar", {"bin/sh": b"#!fake\n", "etc/os": b"t\n"})
    image = src.import_rootfs(tar, "bb:oa", {"Cmd": ["/bin/sh"]})
    paths = {"oci-archive": str(tmp_path / "bb.oci.tar"),
             "docker-archive": str(tmp_path / "bb-docker.tar")}
    for fmt, path in paths.items():
        src.save(["bb:oa"], path, fmt)
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(paths["oci-archive"]) as t:
        t.extractall(layout)
    paths["oci"] = str(layout)
    return image, paths


@pytest.fixture
def ctx(tmp_path):
    return types.SimpleNamespace(store_root=str(tmp_path / "store"))


def store_files(store):
    found = []
    for dirpath, dirs, files in os.walk(store.dir):
        found += [os.path.relpath(os.path.join(dirpath, n), store.dir) for n in files + dirs]
    return sorted(f for f in found if not f.startswith("locks"))


def refs_of(paths):
    return {"oci": "oci:%s:localhost/bb:oa" % paths["oci"],
            "oci-archive": "oci-archive:" + paths["oci-archive"],
            "docker-archive": "docker-archive:" + paths["docker-archive"]}


@pytest.mark.parametrize("kind", ["oci", "oci-archive", "docker-archive"])
def test_run_reads_a_file_transport_as_pull_does(ctx, made, tmp_path, kind):
    image, paths = made
    ref = refs_of(paths)[kind]
    store = ImageStore(ctx.store_root)
    got = prepare.read_or_pull_image(ctx, store, ref, "missing")
    puller = ImageStore(str(tmp_path / "pulled"))
    assert got["id"] == image == puller.pull(ref)
    assert got["names"] == puller.names_of(image) == ["localhost/bb:oa"]
    assert got["pulled_from"] == ref and got["config"]["Cmd"] == ["/bin/sh"]
    assert [i["names"] for i in store.list()] == [["localhost/bb:oa"]]
    assert prepare.build_image_label({"image": ref, "rootfs": None}, got) == "localhost/bb:oa"


@pytest.mark.parametrize("pull", ["never", "missing", "always"])
def test_pull_policy_does_not_apply_to_file_transports(ctx, made, pull):
    # podman's libimage applies the pull policy to registries only: the file is read every time
    image, paths = made
    store = ImageStore(ctx.store_root)
    ref = "oci-archive:" + paths["oci-archive"]
    assert prepare.read_or_pull_image(ctx, store, ref, pull)["id"] == image


def test_a_second_run_reuses_stored_blobs_and_layers(ctx, made, monkeypatch):
    image, paths = made
    store = ImageStore(ctx.store_root)
    for ref in refs_of(paths).values():
        prepare.read_or_pull_image(ctx, store, ref, "missing")
    before = {n: os.lstat(os.path.join(store.dir, n)).st_ino for n in store_files(store)
              if n.startswith(("blobs/", "layers/"))}
    unpacked, fetched = [], []
    real_unpack = layer_mod.apply_unpack_layer
    monkeypatch.setattr(layer_mod, "apply_unpack_layer",
                        lambda *a, **kw: unpacked.append(1) or real_unpack(*a, **kw))
    from capsa.engine.images import archive
    for cls in (archive.LayoutSource, archive.DockerArchiveSource):
        real_fetch = cls.fetch_blob
        monkeypatch.setattr(cls, "fetch_blob", lambda self, *a, _f=real_fetch, **kw:
                            fetched.append(a[0]) or _f(self, *a, **kw))
    for ref in refs_of(paths).values():
        assert prepare.read_or_pull_image(ctx, store, ref, "always")["id"] == image
    after = {n: os.lstat(os.path.join(store.dir, n)).st_ino for n in store_files(store)
             if n.startswith(("blobs/", "layers/"))}
    assert unpacked == [] and fetched == []
    layer_inodes = {n: i for n, i in before.items() if n.startswith("layers/")}
    assert {n: after[n] for n in layer_inodes} == layer_inodes
    assert len(os.listdir(store.path("layers"))) == 1


def truncated(path, dest):
    with open(path, "rb") as f:
        data = f.read()
    with open(dest, "wb") as f:
        f.write(data[:len(data) // 2])
    return dest


def tampered_layer(path, dest, image_store, image):
    layer = image_store.resolve(image)["layers"][0]["digest"].partition(":")[2]
    with tarfile.open(path) as src, tarfile.open(dest, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isreg() else None
            if member.name.endswith(layer):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return dest


def test_bad_input_names_the_reference_and_leaves_nothing(ctx, made, tmp_path):
    image, paths = made
    store = ImageStore(ctx.store_root)
    store.ensure()
    bad = {
        "oci:%s" % (tmp_path / "missing"): "is not a folder",
        "oci:%s:v9" % paths["oci"]: "has no image named 'v9'",
        "oci-archive:%s" % truncated(paths["oci-archive"], str(tmp_path / "cut.tar")): "",
        "docker-archive:%s" % truncated(paths["docker-archive"], str(tmp_path / "cut2.tar")): "",
        "docker-archive:%s:localhost/other:1" % paths["docker-archive"]: "has no image named",
        "oci-archive:%s" % tampered_layer(paths["oci-archive"], str(tmp_path / "t.tar"),
                                          ImageStore(str(tmp_path / "src")), image):
            "digest mismatch",
    }
    empty = store_files(store)
    for ref, why in bad.items():
        for pull in ("missing", "never"):
            with pytest.raises(ImageError) as err:
                prepare.read_or_pull_image(ctx, store, ref, pull)
            line = err.value.line()
            assert line.startswith("image: cannot run " + ref + ": "), line
            assert why in line and "\n" not in line
            assert store_files(store) == empty, ref


def test_a_failed_import_keeps_what_other_images_use(ctx, made, tmp_path):
    image, paths = made
    store = ImageStore(ctx.store_root)
    prepare.read_or_pull_image(ctx, store, "oci-archive:" + paths["oci-archive"], "missing")
    kept = store_files(store)
    cut = truncated(paths["docker-archive"], str(tmp_path / "cut.tar"))
    with pytest.raises(ImageError):
        prepare.read_or_pull_image(ctx, store, "docker-archive:" + cut, "missing")
    assert store_files(store) == kept
    assert store.resolve("localhost/bb:oa")["id"] == image


def test_pull_never_for_a_missing_registry_image_says_so(ctx):
    store = ImageStore(ctx.store_root)
    with pytest.raises(ImageError) as err:
        prepare.read_or_pull_image(ctx, store, "docker://127.0.0.1:1/none:v1", "never")
    assert "--pull=never" in err.value.line()
    assert store.list() == []


def test_rootfs_flag_stays_a_path_even_when_it_looks_like_a_transport(ctx, tmp_path, monkeypatch):
    req = {"rootfs": "oci:" + str(tmp_path / "x"), "image": None}
    with pytest.raises(Exception) as err:
        prepare.resolve_image(ctx, req, str(tmp_path / "c"))
    assert "without --rootfs" in err.value.line()
    folder = tmp_path / "oci:y"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    rootfs, config, image = prepare.resolve_image(ctx, {"rootfs": "oci:y", "image": None},
                                                  str(tmp_path / "c"), dry_run=True)
    assert rootfs == str(folder) and image is None


def test_the_label_is_the_name_this_read_gave_not_another_tag(ctx, made):
    image, paths = made
    store = ImageStore(ctx.store_root)
    ref = "oci-archive:" + paths["oci-archive"]
    prepare.read_or_pull_image(ctx, store, ref, "missing")
    store.tag("localhost/bb:oa", "aaa:1")
    got = prepare.read_or_pull_image(ctx, store, ref, "missing")
    assert got["names"] == ["localhost/aaa:1", "localhost/bb:oa"]
    assert prepare.build_image_label({"image": ref, "rootfs": None}, got) == "localhost/bb:oa"
    assert prepare.build_image_label({"image": "bb:oa", "rootfs": None},
                                     store.resolve("bb:oa")) == "bb:oa"
    assert prepare.build_image_label({"image": None, "rootfs": "/r"}, None) == "/r"


@pytest.mark.parametrize("exc", [OSError(5, "Input/output error"), EOFError(),
                                 tarfile.ReadError("unexpected end of data\nmore")])
def test_a_read_error_mid_copy_is_one_line_and_leaves_nothing(ctx, made, monkeypatch, exc):
    image, paths = made
    store = ImageStore(ctx.store_root)
    store.ensure()
    empty = store_files(store)
    from capsa.engine.images import archive

    def broken(self, digest, size, dest, progress=None):
        with open(dest, "wb") as f:
            f.write(b"half")
        raise exc
    monkeypatch.setattr(archive.LayoutSource, "fetch_blob", broken)
    ref = "oci-archive:" + paths["oci-archive"]
    with pytest.raises(ImageError) as err:
        prepare.read_or_pull_image(ctx, store, ref, "missing")
    line = err.value.line()
    assert line.startswith("image: cannot run %s: cannot read %s: " % (ref, ref)), line
    assert "\n" not in line
    assert store_files(store) == empty


def test_a_full_id_is_found_without_reading_every_record(ctx, made, monkeypatch):
    image, paths = made
    store = ImageStore(ctx.store_root)
    prepare.read_or_pull_image(ctx, store, "oci-archive:" + paths["oci-archive"], "missing")
    monkeypatch.setattr(ImageStore, "records", lambda self: pytest.fail("records() read"))
    assert store.lookup(image) == (image, None)
    assert store.lookup(image[7:]) == (image, None)
    monkeypatch.undo()
    with pytest.raises(ImageError):
        store.lookup("sha256:" + "c" * 64)
