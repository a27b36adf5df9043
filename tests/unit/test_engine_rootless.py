"""capsa/engine/rootless.py's pure parts: the user's store, subordinate ranges, the engine's id
maps, mount options naming unmapped ids, and the refusals."""
import pytest

from capsa.engine import rootless
from capsa.errors import UsageError


def test_default_store_follows_xdg_then_home():
    assert rootless.read_default_store({"XDG_DATA_HOME": "/x/data", "HOME": "/h"}) == \
        "/x/data/capsa"
    assert rootless.read_default_store({"HOME": "/home/ann"}) == "/home/ann/.local/share/capsa"


def test_subordinate_range_by_name_or_uid(tmp_path):
    path = tmp_path / "subuid"
    path.write_text("bob:200000:65536\nann:100000:65536\n1500:300000:10\nbad:x:1\nzero:5:0\n")
    assert rootless.read_subordinate_range(str(path), "ann", 1001) == (100000, 65536)
    assert rootless.read_subordinate_range(str(path), "carl", 1500) == (300000, 10)
    assert rootless.read_subordinate_range(str(path), "zero", 7) is None
    assert rootless.read_subordinate_range(str(path), "bad", 8) is None
    assert rootless.read_subordinate_range(str(tmp_path / "missing"), "ann", 1) is None


def test_id_maps_need_both_ranges():
    assert rootless.build_id_maps(1001, 1002, (100000, 65536), (200000, 1000)) == (
        ["0", "1001", "1", "1", "100000", "65536"], ["0", "1002", "1", "1", "200000", "1000"])
    assert rootless.build_id_maps(1001, 1002, (100000, 65536), None) is None


def test_options_naming_unmapped_ids_are_dropped():
    spec = {"mounts": [{"destination": "/dev/pts", "type": "devpts",
                        "options": ["nosuid", "newinstance", "gid=5", "mode=0620"]},
                       {"destination": "/tmp", "type": "tmpfs", "options": ["uid=0", "gid=0"]},
                       {"destination": "/x", "type": "bind"}]}
    rootless.build_unmapped_options_removed(spec, "0 1001 1", "0 1001 1")
    assert spec["mounts"][0]["options"] == ["nosuid", "newinstance", "mode=0620"]
    assert spec["mounts"][1]["options"] == ["uid=0", "gid=0"]
    wide = {"mounts": [{"destination": "/dev/pts", "options": ["gid=5"]}]}
    rootless.build_unmapped_options_removed(wide, "0 1001 1\n1 100000 65536",
                                            "0 1001 1\n1 100000 65536")
    assert wide["mounts"][0]["options"] == ["gid=5"]


@pytest.mark.parametrize("change, field", [
    ({"network": "bridge"}, "--network"),
    ({"network": "mynet"}, "--network"),
    ({"publish": ["8080:80"]}, "--publish"),
])
def test_refusals_name_the_flag(change, field):
    req = dict({"detach": False, "network": "none", "publish": []}, **change)
    with pytest.raises(UsageError) as info:
        rootless.check_rootless_request(req)
    assert info.value.field == field


def test_runs_and_creates_without_a_network_or_on_the_host_pass():
    for network in ("none", "host"):
        for detach in (False, True):
            rootless.check_rootless_request({"detach": detach, "network": network,
                                             "publish": []})


def test_slirp4netns_publishes_and_refuses_the_rest():
    rootless.check_rootless_request({"detach": True, "network": "slirp4netns",
                                     "publish": ["8080:80"]})
    with pytest.raises(UsageError) as info:
        rootless.check_rootless_request({"detach": False, "network": "host",
                                         "publish": ["8080:80"]})
    assert info.value.field == "--publish"


def test_hostfwd_requests_and_socket_paths():
    from capsa.engine import slirp
    from capsa.errors import NetworkError
    assert slirp.build_hostfwd_requests(["8080:80", "127.0.0.1:53:5353/udp"]) == [
        {"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0",
                                                 "host_port": 8080, "guest_port": 80}},
        {"execute": "add_hostfwd", "arguments": {"proto": "udp", "host_addr": "127.0.0.1",
                                                 "host_port": 53, "guest_port": 5353}}]
    for bad in ("80", "0:80", "a:b", "1:2:3:4"):
        with pytest.raises(NetworkError):
            slirp.build_hostfwd_requests([bad])
    cid = "ab" * 32
    assert slirp.build_socket_path("/home/u/.local/share/capsa/network/slirp", cid, 1000) == \
        "/home/u/.local/share/capsa/network/slirp/" + cid[:12] + ".sock"
    deep = "/home/" + "x" * 100
    assert slirp.build_socket_path(deep, cid, 1000) == "/tmp/capsa-slirp-1000/%s.sock" % cid[:12]
    hosts, resolv = slirp.build_etc_files("box")
    assert "10.0.2.100\tbox" in hosts and resolv == "nameserver 10.0.2.3\n"
