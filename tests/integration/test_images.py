"""Image store against the real kernel and real tools (root): docker-registry pulls and pushes
(anonymous and htpasswd), every transport, whiteouts/opaque folders under a real overlayfs,
escapes refused, shared lower layers, qcow2/raw disks through loop devices, crash cleanup."""
import hashlib
import json
import os
import shutil
import subprocess

import pytest

from capsa.errors import ImageError
from capsa.engine.images.rootfs import (apply_clean_stale, apply_container_rootfs,
                                        apply_release_rootfs)
from capsa.engine.images.store import ImageStore
from tests.integration.test_images_support import (Registry, build_busybox_rootfs,
                                                   build_layer_tar, build_layout, have,
                                                   htpasswd_line, read_loop_backings,
                                                   read_mount_lines, run, write_auth)

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, mknod, losetup)")]
needs_registry = pytest.mark.skipif(not have("docker-registry", "skopeo"),
                                    reason="docker-registry and skopeo (Debian) are not installed")
needs_disk_tools = pytest.mark.skipif(not have("qemu-img", "qemu-storage-daemon", "sfdisk",
                                               "mkfs.ext4", "losetup"),
                                      reason="qemu-utils, qemu-system-common, fdisk are missing")


def layer_tars(workdir):
    base = os.path.join(workdir, "base")
    build_busybox_rootfs(base)
    os.makedirs(os.path.join(base, "data", "old"))
    for name in ("a", "b"):
        with open(os.path.join(base, "data", "old", name), "w") as f:
            f.write(name)
    with open(os.path.join(base, "data", "gone"), "w") as f:
        f.write("gone")
    first = os.path.join(workdir, "l1.tar")
    run("tar", "--numeric-owner", "-C", base, "-cf", first, ".")
    second = build_layer_tar([("data/.wh.gone", "file", ""), ("bin/.wh.ls", "file", ""),
                              ("data/old/.wh..wh..opq", "file", ""), ("data/old/c", "file", "c"),
                              ("data/new", "file", "new")])
    with open(first, "rb") as f:
        return [f.read(), second]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def layout(workdir):
    return build_layout(os.path.join(workdir, "layout"), layer_tars(workdir), name="latest")


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "store"))


def check_merged(rootfs):
    """The whiteout and opaque semantics seen through the real overlay mount."""
    assert os.path.isfile(os.path.join(rootfs, "bin", "busybox"))
    assert not os.path.lexists(os.path.join(rootfs, "bin", "ls"))
    assert os.path.lexists(os.path.join(rootfs, "bin", "cat"))
    assert sorted(os.listdir(os.path.join(rootfs, "data", "old"))) == ["c"]
    assert sorted(os.listdir(os.path.join(rootfs, "data"))) == ["new", "old"]


def test_whiteouts_and_opaque_folders_under_overlayfs(store, layout, tmp_path):
    image = store.import_transport("oci:%s:latest" % layout)
    record = store.resolve(image)
    top = record["layer_dirs"][1]
    st = os.lstat(os.path.join(top, "bin", "ls"))
    assert (st.st_mode & 0o170000, st.st_rdev) == (0o020000, 0)
    assert os.getxattr(os.path.join(top, "data", "old"), "trusted.overlay.opaque") == b"y"
    container = str(tmp_path / "c1")
    rootfs = apply_container_rootfs(store, container, image)
    try:
        check_merged(rootfs)
        out = subprocess.run(["chroot", rootfs, "/bin/sh", "-c", "ls /data/old; echo ok"],
                             stdout=subprocess.PIPE, check=True).stdout
        assert out == b"c\nok\n"
    finally:
        apply_release_rootfs(container)
    assert read_mount_lines(container) == []


def test_two_containers_share_lower_layers_and_keep_their_own_writes(store, layout, tmp_path):
    image = store.import_transport("oci:%s" % layout, name="shared")
    lowers = store.resolve(image)["layer_dirs"]
    c1, c2 = str(tmp_path / "c1"), str(tmp_path / "c2")
    r1 = apply_container_rootfs(store, c1, "shared")
    r2 = apply_container_rootfs(store, c2, "shared", readonly=True)
    try:
        with open(os.path.join(r1, "data", "mine"), "w") as f:
            f.write("c1")
        os.unlink(os.path.join(r1, "data", "new"))
        assert not os.path.exists(os.path.join(r2, "data", "mine"))
        assert os.path.exists(os.path.join(r2, "data", "new"))
        assert os.path.exists(os.path.join(lowers[1], "data", "new"))
        with pytest.raises(OSError):
            open(os.path.join(r2, "data", "x"), "w")
        opts = [line.split(" - ")[1] for line in read_mount_lines(str(tmp_path))]
        assert len(opts) == 2
        lower_opt = "lowerdir=" + ":".join(reversed(lowers))
        assert all(lower_opt in o for o in opts)
        assert os.path.isfile(os.path.join(c1, "upper", "data", "mine"))
        with pytest.raises(ImageError):
            store.remove("shared")
    finally:
        apply_release_rootfs(c1)
        apply_release_rootfs(c2)
    assert read_mount_lines(str(tmp_path)) == []
    assert store.remove("shared")["deleted"] == [image]
    assert os.listdir(store.path("layers")) == []


def test_ownership_modes_devices_xattrs_hardlinks_are_kept(store, tmp_path):
    tar = build_layer_tar([
        ("dev/null", "chr", (1, 3), {"mode": 0o666}), ("run/fifo", "fifo", None),
        ("home/u/f", "file", "x", {"uid": 1000, "gid": 1001, "mode": 0o4750}),
        ("home/u/g", "link", "home/u/f"),
        ("bin/ping", "file", "p", {"xattrs": {"security.capability":
                                              "\x01\x00\x00\x02\x00\x20\x00\x00" + "\0" * 12,
                                              "user.note": "n"}})])
    layout = build_layout(str(tmp_path / "layout"), [tar])
    layer = store.resolve(store.import_transport("oci:" + layout))["layer_dirs"][0]
    st = os.lstat(os.path.join(layer, "dev", "null"))
    assert (os.major(st.st_rdev), os.minor(st.st_rdev), st.st_mode & 0o7777) == (1, 3, 0o666)
    assert os.path.exists(os.path.join(layer, "run", "fifo"))
    st = os.lstat(os.path.join(layer, "home", "u", "f"))
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777, st.st_nlink) == (1000, 1001, 0o4750, 2)
    assert os.getxattr(os.path.join(layer, "bin", "ping"), "user.note") == b"n"
    assert len(os.getxattr(os.path.join(layer, "bin", "ping"), "security.capability")) == 20


@pytest.mark.parametrize("entries", [
    [("../../escaped", "file", "x")],
    [("etc", "symlink", "/etc"), ("etc/capsa-escaped", "file", "x")],
    [("up", "symlink", "../../../../../../../../tmp"), ("up/capsa-escaped", "file", "x")],
])
def test_escaping_layers_are_refused_and_leave_nothing(store, tmp_path, entries):
    layout = build_layout(str(tmp_path / "layout"), [build_layer_tar(entries)])
    with pytest.raises(ImageError) as err:
        store.import_transport("oci:" + layout)
    assert err.value.field == "layer"
    assert not os.path.exists("/etc/capsa-escaped") and not os.path.exists("/tmp/capsa-escaped")
    assert not os.path.exists(str(tmp_path / "escaped"))
    assert store.list() == [] and os.listdir(store.path("layers")) == []


def test_every_file_transport_and_rootfs_tarball(store, layout, tmp_path):
    want = store.import_transport("oci:" + layout)
    d = str(tmp_path)
    run("skopeo", "copy", "oci:%s:latest" % layout, "docker-archive:%s/d.tar:localhost/bb:da" % d)
    run("skopeo", "copy", "oci:%s:latest" % layout, "oci-archive:%s/o.tar:localhost/bb:oa" % d)
    run("skopeo", "copy", "oci:%s:latest" % layout, "dir:%s/dir" % d)
    for ref in ("docker-archive:%s/d.tar" % d, "oci-archive:%s/o.tar" % d, "dir:%s/dir" % d):
        image = store.import_transport(ref)
        check_merged_image(store, image, tmp_path)
        assert image == want     # the config blob travels unchanged: same image id
    assert {"localhost/bb:da", "localhost/bb:oa", "localhost/dir:latest"} <= \
        set(store.resolve("bb:da")["names"])
    assert store.resolve("bb:oa")["config"]["Cmd"] == ["/bin/sh"]
    rootfs = build_busybox_rootfs(str(tmp_path / "rootfs"))
    run("tar", "-C", rootfs, "-cf", d + "/r.tar", ".")
    for comp, suffix in (("gzip", ".gz"), ("xz", ".xz"), ("zstd", ".zst")):
        if shutil.which(comp):
            subprocess.run([comp, "-k", "-q", d + "/r.tar"], check=True)
            image = store.import_rootfs(d + "/r.tar" + suffix, "r" + comp)
            assert os.path.isfile(os.path.join(store.resolve(image)["layer_dirs"][0], "bin",
                                               "busybox"))
    c = str(tmp_path / "ctar")
    r = apply_container_rootfs(store, c, d + "/r.tar.gz")
    assert os.path.isfile(os.path.join(r, "bin", "busybox"))
    apply_release_rootfs(c)


def check_merged_image(store, image, tmp_path):
    container = str(tmp_path / ("c-" + image[7:19]))
    rootfs = apply_container_rootfs(store, container, image)
    try:
        check_merged(rootfs)
    finally:
        apply_release_rootfs(container)


@needs_registry
def test_pull_push_against_docker_registry(store, layout, tmp_path):
    reg = Registry(str(tmp_path))
    try:
        reg.skopeo_copy("oci:%s:latest" % layout, "bb:v1")
        image = store.pull("docker://%s/bb:v1" % reg.addr, tls_verify=False)
        check_merged_image(store, image, tmp_path)
        digest = store.push(image, "%s/pushed:v2" % reg.addr, tls_verify=False)
        assert digest.startswith("sha256:")
        assert store.push(image, "%s/bydigest@%s" % (reg.addr, digest), tls_verify=False) == digest
        run("skopeo", "inspect", "--raw", "--tls-verify=false",
            "docker://%s/bydigest@%s" % (reg.addr, digest))
        with pytest.raises(ImageError):
            store.push(image, "%s/bydigest@sha256:%s" % (reg.addr, "0" * 64), tls_verify=False)
        out = run("skopeo", "inspect", "--tls-verify=false", "docker://%s/pushed:v2" % reg.addr)
        assert len(json.loads(out.stdout)["Layers"]) == 2
        other = ImageStore(str(tmp_path / "other"))
        conf = tmp_path / "registries.conf"
        conf.write_text('unqualified-search-registries = ["%s"]\n[[registry]]\nlocation = "%s"\n'
                        'insecure = true\n' % (reg.addr, reg.addr))
        other.registries_conf = str(conf)
        assert other.pull("pushed:v2") == image       # short name, insecure via registries.conf
        assert other.resolve("pushed:v2")["id"] == image
        with pytest.raises(ImageError) as err:
            other.pull("%s/bb:missing" % reg.addr)
        assert "not found" in err.value.line()
    finally:
        reg.stop()


@needs_registry
def test_pull_with_credentials_from_auth_json(store, layout, tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(htpasswd_line("alice", "secret"))
    reg = Registry(str(tmp_path), htpasswd=str(htpasswd))
    try:
        run("skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", "alice:secret",
            "oci:%s:latest" % layout, "docker://%s/private:v1" % reg.addr)
        with pytest.raises(ImageError) as err:
            store.pull("%s/private:v1" % reg.addr, tls_verify=False)
        assert err.value.field == "auth.json"
        store.auth_file = write_auth(str(tmp_path / "auth.json"), reg.addr, "alice", "secret")
        assert store.pull("%s/private:v1" % reg.addr, tls_verify=False)
    finally:
        reg.stop()


def make_disk(workdir, table="gpt"):
    fs = build_busybox_rootfs(os.path.join(workdir, "diskfs"))
    with open(os.path.join(fs, "etc", "template"), "w") as f:
        f.write("template\n")
    part = os.path.join(workdir, "part.img")
    run("truncate", "-s", "32M", part)
    run("mkfs.ext4", "-q", "-d", fs, part)
    disk = os.path.join(workdir, "disk.img")
    run("truncate", "-s", "40M", disk)
    kind = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" if table == "gpt" else "83"
    subprocess.run(["sfdisk", "-q", disk], input=("label: %s\nstart=2048, size=65536, type=%s\n"
                                                  % (table, kind)).encode(), check=True)
    run("dd", "if=" + part, "of=" + disk, "bs=512", "seek=2048", "conv=notrunc", "status=none")
    os.unlink(part)
    return disk


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@needs_disk_tools
@pytest.mark.parametrize("fmt", ["raw-gpt", "raw-mbr", "qcow2"])
def test_disk_template_is_unchanged_and_loop_devices_are_freed(store, tmp_path, fmt):
    disk = make_disk(str(tmp_path), "dos" if fmt == "raw-mbr" else "gpt")
    if fmt == "qcow2":
        run("qemu-img", "convert", "-O", "qcow2", disk, str(tmp_path / "disk.qcow2"))
        disk = str(tmp_path / "disk.qcow2")
    before = sha256_file(disk)
    loops_before = read_loop_backings()
    container = str(tmp_path / "c")
    rootfs = apply_container_rootfs(store, container, disk)
    try:
        with open(os.path.join(rootfs, "etc", "template")) as f:
            assert f.read() == "template\n"
        with open(os.path.join(rootfs, "etc", "template"), "w") as f:
            f.write("container wrote this\n")
        os.unlink(os.path.join(rootfs, "bin", "cat"))
        assert len(read_loop_backings()) == len(loops_before) + 1
    finally:
        apply_release_rootfs(container)
    assert read_loop_backings() == loops_before
    assert read_mount_lines(str(tmp_path)) == []
    assert sha256_file(disk) == before


@needs_disk_tools
def test_crashed_engine_attachments_are_cleaned(store, tmp_path):
    disk = make_disk(str(tmp_path))
    run("qemu-img", "convert", "-O", "qcow2", disk, str(tmp_path / "disk.qcow2"))
    loops_before = read_loop_backings()
    container = str(tmp_path / "crashed")
    code = ("import os; from capsa.engine.images.rootfs import apply_container_rootfs; "
            "apply_container_rootfs(%r, %r, %r); os._exit(0)"
            % (store.root, container, str(tmp_path / "disk.qcow2")))
    subprocess.run(["python3", "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))))
    assert len(read_loop_backings()) == len(loops_before) + 1
    os.unlink(os.path.join(container, "rootfs.json"))   # the engine lost the container
    assert apply_clean_stale(store.root) == [container]
    assert read_loop_backings() == loops_before
    assert read_mount_lines(str(tmp_path)) == []


@needs_disk_tools
def test_unsupported_disk_layout_leaves_nothing(store, tmp_path):
    disk = str(tmp_path / "blank.img")
    run("truncate", "-s", "8M", disk)
    loops_before = read_loop_backings()
    container = str(tmp_path / "c")
    with pytest.raises(ImageError) as err:
        apply_container_rootfs(store, container, disk)
    assert err.value.field == "rootfs"
    assert read_loop_backings() == loops_before
    assert os.listdir(container) == []
    assert os.listdir(store.path("attachments")) == []


@needs_disk_tools
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_disk_read_write_when_asked_writes_into_the_disk(store, tmp_path, fmt):
    disk = make_disk(str(tmp_path))
    if fmt == "qcow2":
        run("qemu-img", "convert", "-O", "qcow2", disk, str(tmp_path / "disk.qcow2"))
        disk = str(tmp_path / "disk.qcow2")
    loops_before = read_loop_backings()
    container = str(tmp_path / "c")
    rootfs = apply_container_rootfs(store, container, disk, disk_writable=True)
    try:
        with open(os.path.join(rootfs, "etc", "template"), "w") as f:
            f.write("persisted\n")
    finally:
        apply_release_rootfs(container)
    assert read_loop_backings() == loops_before
    again = str(tmp_path / "again")
    rootfs = apply_container_rootfs(store, again, disk)
    try:
        with open(os.path.join(rootfs, "etc", "template")) as f:
            assert f.read() == "persisted\n"
    finally:
        apply_release_rootfs(again)
    assert read_mount_lines(str(tmp_path)) == []


@needs_registry
def test_concurrent_pulls_in_two_processes_and_saved_archives_interoperate(store, layout, tmp_path):
    reg = Registry(str(tmp_path))
    try:
        reg.skopeo_copy("oci:%s:latest" % layout, "bb:v1")
        code = ("import sys; from capsa.engine.images.store import ImageStore; "
                "print(ImageStore(%r).pull(%r, tls_verify=False))" % (store.root,
                                                                    "%s/bb:v1" % reg.addr))
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        procs = [subprocess.Popen(["python3", "-c", code], cwd=repo, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(3)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        ids = {o[0].strip() for o in outs}
        assert len(ids) == 1
        image = ids.pop().decode()
        assert len(os.listdir(store.path("layers"))) == 2
        assert os.listdir(store.path("tmp")) == []
        for fmt in ("docker-archive", "oci-archive"):
            path = str(tmp_path / (fmt + ".tar"))
            store.save([image], path, fmt)
            out = run("skopeo", "inspect", "%s:%s" % (fmt, path)).stdout
            assert len(json.loads(out)["Layers"]) == 2
            other = ImageStore(str(tmp_path / ("load-" + fmt)))
            assert other.load(path) == image
            check_merged_image(other, image, tmp_path)
    finally:
        reg.stop()


@needs_registry
def test_self_signed_registry_needs_tls_verify_false(store, layout, tmp_path):
    if not have("openssl"):
        pytest.skip("openssl is not installed (needed to make a self-signed certificate)")
    reg = Registry(str(tmp_path), tls=True)
    try:
        reg.skopeo_copy("oci:%s:latest" % layout, "bb:tls")
        with pytest.raises(ImageError) as err:
            store.pull("%s/bb:tls" % reg.addr)
        assert "--tls-verify=false" in err.value.line() and "\n" not in err.value.line()
        assert store.list() == []
        image = store.pull("%s/bb:tls" % reg.addr, tls_verify=False)
        assert store.push(image, "%s/bb:tls2" % reg.addr, tls_verify=False)
    finally:
        reg.stop()
