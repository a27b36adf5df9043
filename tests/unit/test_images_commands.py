"""The image commands through a ctx object: flag parsing, --change, --format json output,
usage errors, and a full import -> tag -> images -> save -> load -> rmi -> prune cycle."""
import io
import json
import tarfile

import pytest

from capsa.errors import ImageError, UsageError
from capsa.engine.images import commands as c


class Ctx:
    def __init__(self, root):
        self.store_root = str(root)
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.isatty = False

    def take(self):
        text = self.stdout.getvalue()
        self.stdout.seek(0)
        self.stdout.truncate()
        return text


SPEC = {"--tls-verify": "bool", "--format": "value", "-q": ("alias", "--quiet"), "--quiet": "flag",
        "--change": "multi"}


def test_flag_parser():
    opts, args = c.build_flags(["--tls-verify=false", "-q", "--format", "json", "img",
                                "--change", "CMD x", "--change=ENV A=1", "--", "-x"], SPEC, "t")
    assert opts == {"--tls-verify": False, "--quiet": True, "--format": "json",
                    "--change": ["CMD x", "ENV A=1"]}
    assert args == ["img", "-x"]
    for bad in (["--nope"], ["--format"], ["--tls-verify=maybe"], ["-q=1"]):
        with pytest.raises(UsageError):
            c.build_flags(bad, SPEC, "t")


def test_changes():
    changes = c.build_changes(['CMD ["/bin/sh", "-c", "echo hi"]', "ENTRYPOINT /init",
                               "ENV A=1", "WORKDIR /srv", "EXPOSE 80 53/udp", "USER 1000"])
    assert changes["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert changes["Entrypoint"] == ["/bin/sh", "-c", "/init"]
    assert changes["Env"][1] == "A=1" and changes["Env"][0].startswith("PATH=")
    assert changes["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert changes["WorkingDir"] == "/srv" and changes["User"] == "1000"
    for bad in ("FROM x", "CMD", "CMD [broken"):
        with pytest.raises(UsageError):
            c.build_changes([bad])


def test_command_cycle(tmp_path):
    ctx = Ctx(tmp_path / "store")
    tar = tmp_path / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("etc/os")
        info.size = 3
        t.addfile(info, io.BytesIO(b"os\n"))
    assert c.cmd_import_(ctx, ["--change", 'CMD ["/bin/sh"]', "--format", "json", str(tar),
                               "bb"]) == 0
    image = json.loads(ctx.take())
    assert image["names"] == ["localhost/bb:latest"]
    assert c.cmd_tag(ctx, ["bb", "other:1"]) == 0
    c.cmd_images(ctx, ["--format", "json"])
    listed = json.loads(ctx.take())
    assert listed[0]["names"] == ["localhost/bb:latest", "localhost/other:1"]
    c.cmd_images(ctx, [])
    table = ctx.take().splitlines()
    assert table[0].split()[:3] == ["REPOSITORY", "TAG", "IMAGE"] and len(table) == 3
    c.cmd_image_inspect(ctx, ["other:1"])
    assert json.loads(ctx.take())[0]["config"]["Cmd"] == ["/bin/sh"]
    out = tmp_path / "o.tar"
    assert c.cmd_save(ctx, ["-o", str(out), "--format", "oci-archive", "bb"]) == 0
    ctx2 = Ctx(tmp_path / "store2")
    c.cmd_load(ctx2, ["-i", str(out), "--format", "json"])
    assert json.loads(ctx2.take())["id"] == image["id"]
    c.cmd_rmi(ctx, ["other:1"])
    assert ctx.take().strip() == "Untagged: localhost/other:1"
    c.cmd_rmi(ctx, ["--format", "json", "bb"])
    assert json.loads(ctx.take())[0]["deleted"] == [image["id"]]
    c.cmd_image_prune(ctx, ["-a", "--format", "json"])
    assert json.loads(ctx.take())["deleted"] == []
    c.cmd_import_(ctx2, ["oci-archive:%s" % out, "again"])
    assert ctx2.take().strip() == image["id"]


def test_usage_errors(tmp_path):
    ctx = Ctx(tmp_path)
    for cmd, argv in ((c.cmd_pull, []), (c.cmd_push, []), (c.cmd_rmi, []), (c.cmd_tag, ["a"]),
                      (c.cmd_load, []), (c.cmd_save, ["img"]), (c.cmd_import_, ["x"]),
                      (c.cmd_images, ["--format", "yaml"]), (c.cmd_image_prune, ["x"]),
                      (c.cmd_save, ["-o", "x", "--format", "tar", "img"])):
        with pytest.raises(UsageError):
            cmd(ctx, argv)
    with pytest.raises(ImageError):
        c.cmd_image_inspect(ctx, ["missing"])
    assert c.cmd_pull(ctx, ["--help"]) == 0 and "usage" in ctx.take()


def test_progress_on_a_terminal_only(tmp_path):
    import base64
    from tests.unit.test_images_registry import FakeRegistry
    from capsa.engine.images import manifest as mf
    reg = FakeRegistry()
    try:
        manifest, _ = reg.add_image("amd64", size=2000)
        reg.manifests["v1"] = (manifest, mf.DOCKER_MANIFEST)
        auth = tmp_path / "auth.json"
        auth.write_text(json.dumps({"auths": {reg.addr: {"auth": base64.b64encode(
            b"alice:secret").decode()}}}))
        for tty in (False, True):
            ctx = Ctx(tmp_path / ("s%d" % tty))
            ctx.isatty = tty
            assert c.cmd_pull(ctx, ["--tls-verify=false", "--authfile", str(auth),
                                    reg.addr + "/bb:v1"]) == 0
            assert ctx.take().startswith("sha256:")
            err = ctx.stderr.getvalue()
            if tty:
                assert "\r" in err and "100%" in err and err.endswith("\n")
            else:
                assert err == ""
    finally:
        reg.stop()
