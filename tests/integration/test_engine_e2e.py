"""The engine end to end across its parts: a container run from every image transport (pulled
first, and given straight to run/create/declared image= as podman takes them), and two
containers that find each other by name on a user network (issues 7 and 9, through `capsa`)."""
import json
import os
import shutil
import subprocess

import pytest

from tests.integration.test_engine_support import Engine, make_fixtures
from tests.integration.test_images_support import Registry, free_port, have

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups)")

base_rootfs, rootfs, eng = make_fixtures()


def make_sources(tmp_path, runtime, registry=None):
    """{transport: reference} of one busybox image saved by a separate store, so the store
    under test starts empty; docker:// when a registry is given."""
    maker = Engine(tmp_path / "maker", runtime)
    # no network: the image is all this store is for (a default bridge would outlive the test)
    maker.out("run", "--rm", "--network", "none", "busybox", "true")
    archive = str(tmp_path / "bb-docker.tar")
    maker.out("save", "-o", archive, "busybox")
    maker.cleanup()
    refs = {"docker-archive": "docker-archive:" + archive,
            "oci": "oci:%s:v1" % (tmp_path / "layout"),
            "oci-archive": "oci-archive:%s:localhost/bb:oa" % (tmp_path / "o.tar"),
            "dir": "dir:%s" % (tmp_path / "dir")}
    for kind in ("oci", "oci-archive", "dir"):
        subprocess.run(["skopeo", "copy", "-q", refs["docker-archive"], refs[kind]], check=True)
    refs["oci-archive"] = "oci-archive:%s" % (tmp_path / "o.tar")
    if registry:
        registry.skopeo_copy(refs["docker-archive"], "bb:v1")
        refs["docker"] = "docker://%s/bb:v1" % registry.addr
    return refs


def test_a_container_from_every_transport(eng, tmp_path):
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed on this host")
    for kind, ref in sorted(make_sources(tmp_path, eng.runtime).items()):
        image = eng.out("pull", ref).strip()
        assert image.startswith("sha256:"), (kind, image)
        assert eng.out("run", "--rm", image[7:19], "echo", "from " + kind) == "from %s\n" % kind


def read_content(root):
    """{relative path: inode} of the store's layer folders, and the names of its blobs."""
    images = os.path.join(root, "images")
    layers = {n: os.lstat(os.path.join(images, "layers", n)).st_ino
              for n in os.listdir(os.path.join(images, "layers"))}
    return layers, sorted(os.listdir(os.path.join(images, "blobs", "sha256")))


def image_names(eng):
    return {i["id"]: i["names"] for i in json.loads(eng.out("images", "--format", "json"))}


needs_tools = pytest.mark.skipif(not have("skopeo", "docker-registry"),
                                 reason="skopeo or docker-registry is not installed on this host")


@needs_tools
def test_run_and_create_take_every_transport_directly(eng, tmp_path):
    reg = Registry(str(tmp_path))
    try:
        refs = make_sources(tmp_path, eng.runtime, reg)
        puller = Engine(tmp_path / "puller", eng.runtime)
        for kind, ref in sorted(refs.items()):
            # the registry speaks plain HTTP
            tls = ["--tls-verify=false"] if kind == "docker" else []
            out = eng.out("run", "--rm", *tls, ref, "echo", "from " + kind)
            assert out == "from %s\n" % kind
            content = read_content(eng.root)
            assert eng.out("run", "--rm", *tls, ref, "echo", "again") == "again\n"
            # the second run reuses the stored image: no layer unpacked or blob copied again
            assert read_content(eng.root) == content, kind
            pulled = puller.out("pull", *tls, ref).strip()
            assert image_names(eng)[pulled] == image_names(puller)[pulled], kind
        cid = eng.out("create", "--name", "made", refs["oci"], "echo", "created").strip()
        assert eng.out("start", "-a", cid) == "created\n"
        listed = json.loads(eng.out("ps", "-a", "--format", "json"))
        assert [c["Image"] for c in listed] == ["localhost/layout:v1"]
        eng.out("rm", "made")
        # one image per distinct config: busybox from docker-archive, dir and the registry, and
        # its skopeo OCI conversion from oci and oci-archive
        assert len(json.loads(eng.out("images", "--format", "json"))) == len(
            json.loads(puller.out("images", "--format", "json")))
    finally:
        reg.stop()


@needs_tools
def test_pull_policy_for_file_transports_and_registries(eng, tmp_path):
    reg = Registry(str(tmp_path))
    try:
        refs = make_sources(tmp_path, eng.runtime, reg)
        # as podman: a file transport is read whatever --pull says
        for policy in ("never", "missing", "always"):
            out = eng.out("run", "--rm", "--pull=" + policy, refs["oci-archive"], "echo", policy)
            assert out == policy + "\n"
        # a registry: never refuses what is not stored, missing pulls once, always pulls again
        reg_run = ("run", "--rm", "--tls-verify=false")
        proc = eng.run(*reg_run, "--pull=never", refs["docker"], "true", check=125)
        assert refs["docker"] in proc.stderr and "--pull=never" in proc.stderr
        assert eng.out(*reg_run, "--pull=missing", refs["docker"], "echo", "m") == "m\n"
        assert eng.out(*reg_run, "--pull=always", refs["docker"], "echo", "a") == "a\n"
        reg.stop()
        assert eng.out(*reg_run, "--pull=never", refs["docker"], "echo", "n") == "n\n"
        assert eng.out(*reg_run, refs["docker"], "echo", "stored") == "stored\n"
        proc = eng.run(*reg_run, "--pull=always", refs["docker"], "true", check=125)
        assert refs["docker"] in proc.stderr and len(proc.stderr.splitlines()) == 1
    finally:
        reg.stop()


def test_a_layered_layout_runs_directly_and_rootfs_paths_stay_paths(eng, tmp_path, rootfs):
    from tests.integration.test_images import layer_tars
    from tests.integration.test_images_support import build_layout
    layout = build_layout(str(tmp_path / "layers"), layer_tars(str(tmp_path)), name="two")
    # the upper layer whites out /bin/ls and /data/gone and makes /data/old opaque
    script = "cd /data && echo *; cd old && echo *; test -e /bin/ls || echo no-ls"
    out = eng.out("run", "--rm", "oci:%s:two" % layout, "sh", "-c", script)
    assert out == "new old\nc\nno-ls\n"
    assert len(os.listdir(os.path.join(eng.root, "images", "layers"))) == 2
    # --rootfs is a path even when it is spelled like a transport
    odd = str(tmp_path / "oci:rootfs")
    shutil.copytree(rootfs, odd, symlinks=True)
    assert eng.out("run", "--rm", "--rootfs", odd, "echo", "folder") == "folder\n"
    subprocess.run(["tar", "-C", rootfs, "-czf", str(tmp_path / "r.tar.gz"), "."], check=True)
    assert eng.out("run", "--rm", "--rootfs", str(tmp_path / "r.tar.gz"), "echo", "tar") == "tar\n"
    proc = eng.run("run", "--rm", rootfs, "true", check=125)
    assert "--rootfs " + rootfs in proc.stderr and len(proc.stderr.splitlines()) == 1


def read_leftovers(root):
    """Everything a failed run/create could leave: image content, records, container folders."""
    found = []
    for sub in ("images/blobs/sha256", "images/layers", "images/tmp", "images/meta",
                "images/users", "images/attachments", "containers", "names"):
        if os.path.isdir(os.path.join(root, sub)):
            found += [sub + "/" + n for n in os.listdir(os.path.join(root, sub))]
    return found


@needs_tools
def test_bad_image_references_leave_nothing(eng, tmp_path):
    refs = make_sources(tmp_path, eng.runtime)
    cut = str(tmp_path / "cut.tar")
    with open(refs["docker-archive"].partition(":")[2], "rb") as f:
        data = f.read()
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 2])
    bad = {"oci:%s" % (tmp_path / "missing"): "is not a folder",
           "docker-archive:" + cut: "cannot run",
           "oci-archive:%s" % (tmp_path / "bb-docker.tar"): "oci-layout",
           refs["oci"].rpartition(":")[0] + ":v9": "no image named 'v9'",
           "dir:%s" % (tmp_path / "layout"): "manifest.json",
           "docker://127.0.0.1:%d/bb:v1" % free_port(): "127.0.0.1"}
    for ref, why in sorted(bad.items()):
        for argv in (("run", "--rm", ref, "true"), ("create", "--name", "c", ref, "true")):
            proc = eng.run(*argv)
            assert proc.returncode == 125, (ref, proc.stderr)
            assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
            assert proc.stderr.startswith("capsa: image: ") and ref in proc.stderr, proc.stderr
            assert why in proc.stderr, proc.stderr
            assert read_leftovers(eng.root) == [], ref
    assert json.loads(eng.out("images", "--format", "json")) == []


@needs_tools
def test_declared_image_key_takes_a_transport(eng, tmp_path):
    refs = make_sources(tmp_path, eng.runtime)
    home = tmp_path / "home"
    (home / "configs").mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    (home / "configs" / "fromoci").write_text(
        "image=%s\nnetwork=none\nvolume=%s:/out\ncommand=sh -c 'echo declared > /out/x'\n"
        % (refs["oci"], out))
    eng.run("start", "-d", "fromoci", check=0)
    assert (out / "x").read_text() == "declared\n"
    assert "localhost/layout:v1" in image_names(eng)[next(iter(image_names(eng)))]
    missing = "oci:%s:v1" % (tmp_path / "missing")
    (home / "configs" / "broken").write_text("image=%s\nnetwork=none\ncommand=true\n" % missing)
    kept = read_leftovers(eng.root)
    proc = eng.run("start", "-d", "broken")
    assert proc.returncode != 0 and missing in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and read_leftovers(eng.root) == kept


def test_two_containers_reach_each_other_by_name(eng):
    net = "e2e%d" % os.getpid()
    eng.out("network", "create", net, "--subnet", "10.89.%d.0/24" % (100 + os.getpid() % 100))
    try:
        eng.out("run", "-d", "--name", "server", "--network", net, "busybox", "sleep", "60")
        out = eng.out("run", "--rm", "--network", net, "busybox", "sh", "-c",
                      "ping -c1 -W3 server >/dev/null && echo reached; grep -w server /etc/hosts")
        lines = out.splitlines()
        assert lines[0] == "reached"
        assert lines[1].split()[1] == "server" and lines[1].startswith("10.89.")
        eng.out("rm", "-f", "server")
    finally:
        eng.run("rm", "-f", "server")
        eng.run("network", "rm", net)
    assert net not in eng.out("network", "ls")
