"""Reference parsing: docker names, Docker Hub's library/ rule, transports, bad references."""
import pytest

from capsa.errors import ImageError
from capsa.engine.images.reference import (build_docker_reference, build_name,
                                           build_registry_host, build_transport_reference)

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, name, qualified", [
    ("busybox", "docker.io/library/busybox:latest", False),
    ("busybox:1.36", "docker.io/library/busybox:1.36", False),
    ("user/app", "docker.io/user/app:latest", False),
    ("docker.io/busybox", "docker.io/library/busybox:latest", True),
    ("127.0.0.1:5000/bb:v1", "127.0.0.1:5000/bb:v1", True),
    ("localhost/bb", "localhost/bb:latest", True),
    ("quay.io/a/b/c:t", "quay.io/a/b/c:t", True),
    ("bb@" + DIGEST, "docker.io/library/bb@" + DIGEST, False),
    ("reg.io:443/bb:t@" + DIGEST, "reg.io:443/bb:t@" + DIGEST, True),
])
def test_docker_reference_normalises_like_docker(text, name, qualified):
    ref = build_docker_reference(text)
    assert build_name(ref) == name
    assert ref["qualified"] is qualified


def test_default_registry_is_configurable_and_library_rule_is_docker_hub_only():
    assert build_name(build_docker_reference("bb", "localhost")) == "localhost/bb:latest"
    assert build_name(build_docker_reference("bb", "quay.io")) == "quay.io/bb:latest"


def test_docker_hub_host():
    assert build_registry_host("docker.io") == "registry-1.docker.io"
    assert build_registry_host("127.0.0.1:5000") == "127.0.0.1:5000"


@pytest.mark.parametrize("text", ["", "Busybox", "bb:", "bb:-x", "bb@sha256:abc", "a//b",
                                  "bb@md5:" + "a" * 32, "bad name", "-bb", "x" * 300,
                                  "bb:" + "t" * 129])
def test_bad_references_are_one_clear_image_error(text):
    with pytest.raises(ImageError) as err:
        build_docker_reference(text)
    assert "\n" not in err.value.line()
    assert err.value.field in ("reference", "reference digest")


@pytest.mark.parametrize("text, expect", [
    ("oci:/x/layout", {"transport": "oci", "path": "/x/layout", "name": None}),
    ("oci:/x/layout:v1", {"transport": "oci", "path": "/x/layout", "name": "v1"}),
    ("oci-archive:/a.tar:localhost/bb:latest",
     {"transport": "oci-archive", "path": "/a.tar", "name": "localhost/bb:latest"}),
    ("docker-archive:/d.tar", {"transport": "docker-archive", "path": "/d.tar", "name": None}),
    ("dir:/some/dir", {"transport": "dir", "path": "/some/dir", "name": None}),
])
def test_file_transports_split_at_first_colon_like_skopeo(text, expect):
    assert build_transport_reference(text) == expect


def test_docker_transport_and_bare_names():
    ref = build_transport_reference("docker://127.0.0.1:5000/bb:v1")
    assert ref["transport"] == "docker" and ref["registry"] == "127.0.0.1:5000"
    assert build_transport_reference("bb")["repository"] == "library/bb"


@pytest.mark.parametrize("text", ["oci:", "dir:/x:name", "docker://"])
def test_bad_transport_references(text):
    with pytest.raises(ImageError):
        build_transport_reference(text)
