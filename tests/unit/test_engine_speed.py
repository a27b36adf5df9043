"""What keeps `capsa run --rm busybox true` fast (docs/engine.md, "Runtimes and speed"): the hot
path imports no heavy module, a local tag is found before registries.conf is read, rootfs
records are not fsynced, a `--rm` overlay is volatile, trees are removed without shutil."""
import os
import subprocess
import sys

import pytest

from capsa.errors import ImageError
from capsa.syscalls.fake import FakeKernel
from capsa.engine.images.rootfs import apply_container_rootfs, build_overlay_options
from capsa.engine.images.store import ImageStore, write_json_atomic
from capsa.engine.store import apply_remove_tree
from tests.unit.test_images_rootfs import make_image, release_mounted

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
IMAGE_ID = "sha256:" + "ab" * 32
# json 8 ms, tomllib 8 ms (with typing, datetime, string), hashlib 3 ms, shutil 2 ms (bz2, lzma)
HEAVY = ("json", "tomllib", "hashlib", "shutil", "re", "typing", "argparse", "dataclasses",
         "logging", "subprocess", "importlib", "tempfile", "datetime")
# the modules and calls a foreground `capsa run --rm IMAGE` makes on the engine side
HOT_PATH = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
root = sys.argv[2]
import capsa.engine.cli, capsa.engine.lifecycle, capsa.engine.prepare, capsa.engine.monitor
import capsa.engine.runtimes, capsa.engine.volumes, capsa.engine.images.rootfs
from capsa.engine.images.store import ImageStore, write_json_atomic, build_path_key
from capsa.engine.store import ContainerStore, apply_remove_tree
from capsa.engine.prepare import read_seccomp
assert ImageStore(root).lookup("bb")[1] == "localhost/bb:latest"
profile = read_seccomp({"security": {"seccomp": None}}, None)
assert profile is None or profile["defaultAction"]
write_json_atomic(os.path.join(root, "x.json"), {"a": 1}, durable=False)
store = ContainerStore(root)
store.reserve("c1", "web")
store.save({"id": "c1", "name": "web"})
assert store.lookup("web")["id"] == "c1"
store.set_state("c1", status="exited")
store.remove(store.load("c1"))
assert not os.path.exists(store.path("c1"))
build_path_key(root)
os.makedirs(os.path.join(root, "tree", "sub"))
apply_remove_tree(os.path.join(root, "tree"))
print(" ".join(sorted(sys.modules)))
"""


@pytest.fixture(autouse=True)
def _no_registries_env(monkeypatch):
    monkeypatch.delenv("CAPSA_REGISTRIES_CONF", raising=False)


def _store_with_local_tag(root, registries_conf="unqualified-search-registries = [\n"):
    os.makedirs(os.path.join(root, "images"))
    with open(os.path.join(root, "images", "tags.json"), "w") as f:
        f.write('{"localhost/bb:latest": "%s"}' % IMAGE_ID)
    # broken TOML: reading it would fail the lookup
    with open(os.path.join(root, "registries.conf"), "w") as f:
        f.write(registries_conf)


def test_hot_path_imports_nothing_heavy(tmp_path):
    root = str(tmp_path / "store")
    _store_with_local_tag(root)
    env = {k: v for k, v in os.environ.items() if k != "CAPSA_REGISTRIES_CONF"}
    proc = subprocess.run([PYTHON, "-I", "-S", "-c", HOT_PATH, REPO, root],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    modules = set(proc.stdout.split())
    assert "capsa.engine.lifecycle" in modules and "capsa.jsonlite" in modules
    assert sorted(m for m in HEAVY if m in modules) == []


def test_local_short_name_is_found_before_registries_conf_is_read(tmp_path):
    root = str(tmp_path / "store")
    _store_with_local_tag(root)
    store = ImageStore(root)
    assert store.lookup("bb") == (IMAGE_ID, "localhost/bb:latest")
    assert store.lookup("localhost/bb") == (IMAGE_ID, "localhost/bb:latest")
    # a name that is not local still goes through the search registries (and their file)
    with pytest.raises(ImageError) as err:
        store.lookup("alpine")
    assert "registries" in err.value.line()


def test_search_registries_still_match_after_the_local_name(tmp_path):
    root = str(tmp_path / "store")
    _store_with_local_tag(root, 'unqualified-search-registries = ["quay.io"]\n')
    with open(os.path.join(root, "images", "tags.json"), "w") as f:
        f.write('{"quay.io/alpine:latest": "%s"}' % IMAGE_ID)
    store = ImageStore(root)
    assert store.lookup("alpine") == (IMAGE_ID, "quay.io/alpine:latest")
    assert store.candidates("alpine") == ["localhost/alpine:latest", "quay.io/alpine:latest"]


def test_rootfs_records_are_renamed_into_place_without_fsync(tmp_path, monkeypatch):
    store = ImageStore(str(tmp_path / "store"))
    make_image(store, tmp_path)
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    container = str(tmp_path / "c")
    apply_container_rootfs(store, container, "bb", kernel=FakeKernel())
    assert synced == []
    assert os.path.isfile(os.path.join(container, "rootfs.json"))
    assert [n for n in os.listdir(container) if ".tmp-" in n] == []
    write_json_atomic(str(tmp_path / "meta.json"), {"a": 1})
    assert len(synced) == 1          # image metadata stays durable


@pytest.mark.parametrize("volatile", [False, True])
def test_rm_containers_get_a_volatile_overlay(tmp_path, monkeypatch, volatile):
    store = ImageStore(str(tmp_path / "store"))
    make_image(store, tmp_path)
    kernel = FakeKernel()
    container = str(tmp_path / "c")
    rootfs = apply_container_rootfs(store, container, "bb", kernel=kernel, volatile=volatile)
    (_, _, _, _, data), = kernel.calls_of("mount")
    assert data == build_overlay_options(store.resolve("bb")["layer_dirs"], container + "/upper",
                                         container + "/work", volatile)
    assert data.endswith(",volatile") == volatile
    release_mounted(monkeypatch, kernel, container, rootfs)
    assert os.listdir(container) == []


def test_volatile_flag_on_the_fsconfig_path(tmp_path, monkeypatch):
    from capsa.syscalls.fs import FSCONFIG_SET_FLAG
    store = ImageStore(str(tmp_path / "store"))
    make_image(store, tmp_path)
    real = store.resolve

    def resolve(ref):
        record = real(ref)
        record["layer_dirs"] = ["/l/" + ("%064x" % i) for i in range(80)]
        return record
    monkeypatch.setattr(store, "resolve", resolve)
    kernel = FakeKernel()
    apply_container_rootfs(store, str(tmp_path / "c"), "bb", kernel=kernel, volatile=True)
    flags = [c for c in kernel.calls_of("fsconfig") if c[1] == FSCONFIG_SET_FLAG]
    assert [c[2] for c in flags] == ["volatile"]


def test_remove_tree_does_not_follow_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("12345")
    (tree / "top").write_text("123")
    os.symlink(str(outside), str(tree / "a" / "link"))
    os.symlink(str(outside / "keep"), str(tree / "filelink"))
    freed = apply_remove_tree(str(tree))
    assert not tree.exists()
    assert (outside / "keep").read_text() == "precious"
    assert freed >= 8
    assert apply_remove_tree(str(tree)) == 0
    (tmp_path / "file").write_text("xy")
    assert apply_remove_tree(str(tmp_path / "file")) == 2
    assert not (tmp_path / "file").exists()
    os.symlink(str(outside), str(tmp_path / "dirlink"))
    apply_remove_tree(str(tmp_path / "dirlink"))
    assert not os.path.lexists(str(tmp_path / "dirlink"))
    assert (outside / "keep").exists()


class _WarmRecorder:
    name = "recorder"

    def __init__(self):
        self.warmed = 0

    def warm_up(self):
        self.warmed += 1


@pytest.mark.parametrize("command,args,warmed", [
    ("run", ["--pull", "never", "nosuch-image", "true"], 1),
    ("create", ["--pull", "never", "nosuch-image", "true"], 0),
    ("run", ["--dry-run", "--pull", "never", "nosuch-image", "true"], 0),
])
def test_a_foreground_run_warms_the_runtime_up_before_preparing(tmp_path, monkeypatch, command,
                                                                args, warmed):
    import io
    from capsa.engine import cli
    runtime = _WarmRecorder()
    monkeypatch.setattr("capsa.engine.runtimes.build_runtime", lambda name, root: runtime)
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([command] + args, cli.Context(str(tmp_path), stdout=out, stderr=err))
    assert code == 125 and "nosuch-image" in err.getvalue()
    assert runtime.warmed == warmed
    containers = os.path.join(str(tmp_path), "containers")
    assert not os.path.isdir(containers) or os.listdir(containers) == []


def test_in_process_warm_up_is_the_runtime_cgroup_warm_up(tmp_path, monkeypatch):
    from capsa.engine.runtimes import InProcessRuntime
    calls = []
    monkeypatch.setattr("capsa.runtime.launch.start_cgroup_warmup", lambda: calls.append(1))
    InProcessRuntime(str(tmp_path)).warm_up()
    assert calls == [1]


@pytest.mark.parametrize("raw,path", [
    (b"/plain/path", "/plain/path"),
    (b"/with\\040space", "/with space"),
    (b"/back\\134slash", "/back\\slash"),
    (b"/tab\\011nl\\012end", "/tab\tnl\nend"),
    ("/caf\u00e9".encode(), "/caf\u00e9"),
    (b"/not\\9octal\\", "/not\\9octal\\"),
])
def test_mountinfo_paths_are_unescaped_without_the_codec(raw, path):
    from capsa.engine.images.rootfs import build_unescaped
    assert build_unescaped(raw) == path
