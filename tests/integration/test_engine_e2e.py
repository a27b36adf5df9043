"""The engine end to end across its parts: a container run from every image transport, and two
containers that find each other by name on a user network (issues 7 and 9, through `capsa`)."""
import os
import shutil
import subprocess

import pytest

from tests.integration.test_engine_support import make_fixtures

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, cgroups)")

base_rootfs, rootfs, eng = make_fixtures()


def test_a_container_from_every_transport(eng, tmp_path):
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed on this host")
    eng.out("run", "--rm", "busybox", "true")
    archive = str(tmp_path / "bb-docker.tar")
    eng.out("save", "-o", archive, "busybox")
    refs = {"docker-archive": "docker-archive:" + archive,
            "oci": "oci:%s:latest" % (tmp_path / "layout"),
            "oci-archive": "oci-archive:%s:localhost/bb:oa" % (tmp_path / "o.tar"),
            "dir": "dir:%s" % (tmp_path / "dir")}
    for kind in ("oci", "oci-archive", "dir"):
        subprocess.run(["skopeo", "copy", "-q", refs["docker-archive"], refs[kind]], check=True)
    refs["oci-archive"] = "oci-archive:%s" % (tmp_path / "o.tar")
    for kind, ref in sorted(refs.items()):
        image = eng.out("pull", ref).strip()
        assert image.startswith("sha256:"), (kind, image)
        assert eng.out("run", "--rm", image[7:19], "echo", "from " + kind) == "from %s\n" % kind


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
