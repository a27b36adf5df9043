"""Pure parts of capsa networking: names, subnets, conflists, ports, /etc files, the CNI stdin."""
import os

import pytest

from capsa.engine.network import cni
from capsa.engine.network.conflist import (
    build_bridge_name, build_free_subnet, build_network, check_name, check_no_overlap,
    find_overlap, parse_subnet)
from capsa.engine.network.etcfiles import (
    apply_write_in_place, build_host_mode_hosts, build_hosts, build_resolv, parse_add_host)
from capsa.engine.network.ports import (
    build_port_mappings, clash, format_mapping, parse_expose, parse_publish)
from capsa.errors import NetworkError


@pytest.mark.parametrize("name", ["web", "a", "net-1.x_y", "9lives"])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".x", "a/b", "a b", "x" * 65, "ü"])
def test_bad_names_name_the_field(name):
    with pytest.raises(NetworkError) as err:
        check_name(name)
    assert err.value.field == "network name"


@pytest.mark.parametrize("name", ["none", "host", "bridge", "capsa"])
def test_mode_words_are_reserved(name):
    with pytest.raises(NetworkError, match="reserved"):
        check_name(name)


@pytest.mark.parametrize("text,fragment", [
    ("10.89.1.5/24", "host bits"), ("10.89.1.0", "no prefix"), ("fd00::/64", "IPv4"),
    ("10.89.1.0/31", "too small"), ("nonsense", "not a subnet")])
def test_bad_subnets(text, fragment):
    with pytest.raises(NetworkError, match=fragment):
        parse_subnet(text)


def test_overlap_with_network_and_route_but_not_default_route():
    net = parse_subnet("10.89.1.0/24")
    routes = [("0.0.0.0/0", "eth0"), ("192.0.2.0/24", "eth0")]
    assert find_overlap(net, [], routes) is None
    assert find_overlap(net, [("a", "10.89.0.0/16")], routes) == ("network", "a", "10.89.0.0/16")
    assert find_overlap(net, [], [("10.89.1.128/25", "br9")]) == ("route", "br9", "10.89.1.128/25")
    with pytest.raises(NetworkError, match="overlaps network 'a'"):
        check_no_overlap(net, [("a", "10.89.0.0/16")], [])
    with pytest.raises(NetworkError, match="host route 10.89.1.128/25 on br9"):
        check_no_overlap(net, [], [("10.89.1.128/25", "br9")])


def test_free_subnet_skips_taken_ones():
    taken = [("a", "10.89.0.0/24"), ("b", "10.89.1.0/24")]
    assert str(build_free_subnet(taken, [("10.89.2.0/23", "x")])) == "10.89.4.0/24"
    assert str(build_free_subnet([], [], ("10.87.0.0/16",))) == "10.87.0.0/16"
    assert str(build_free_subnet([], [("10.87.5.0/24", "y")], ("10.87.0.0/16",))) == "10.89.0.0/24"


def test_bridge_name_skips_used():
    assert build_bridge_name({"capsa0", "capsa1", "eth0"}) == "capsa2"


def test_bridge_conflist_has_nat_ports_and_default_route():
    conf = build_network("web", "10.89.3.0/24", mtu="1400", device="capsa3", ipam_dir="/s/ipam/web")
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "portmap", "firewall", "tuning"]
    main = conf["plugins"][0]
    assert main["isGateway"] and main["ipMasq"] and main["mtu"] == 1400 and main["bridge"] == "capsa3"
    assert main["ipam"] == {"type": "host-local", "dataDir": "/s/ipam/web", "routes": [{"dst": "0.0.0.0/0"}],
                            "ranges": [[{"subnet": "10.89.3.0/24", "gateway": "10.89.3.1"}]]}
    assert conf["capsa"]["gateway"] == "10.89.3.1" and conf["cniVersion"] == "1.0.0"


def test_internal_conflist_has_no_way_out():
    conf = build_network("in", "10.89.4.0/24", internal=True, device="capsa4")
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "tuning"]
    main = conf["plugins"][0]
    assert not main["isGateway"] and not main["ipMasq"] and main["ipam"]["routes"] == []


def test_ip_range_and_gateway():
    conf = build_network("r", "10.89.5.0/24", gateway="10.89.5.254", ip_range="10.89.5.128/25",
                         device="b")
    span = conf["plugins"][0]["ipam"]["ranges"][0][0]
    assert span == {"subnet": "10.89.5.0/24", "gateway": "10.89.5.254",
                    "rangeStart": "10.89.5.128", "rangeEnd": "10.89.5.254"}
    with pytest.raises(NetworkError, match="not inside"):
        build_network("r", "10.89.5.0/24", ip_range="10.89.6.0/25", device="b")
    with pytest.raises(NetworkError) as err:
        build_network("r", "10.89.5.0/24", gateway="10.89.6.1", device="b")
    assert err.value.field == "--gateway"


def test_macvlan_needs_parent_and_bad_driver_is_refused():
    conf = build_network("m", "10.89.7.0/24", driver="macvlan", device="dummy0")
    assert conf["plugins"][0]["type"] == "macvlan" and conf["plugins"][0]["master"] == "dummy0"
    with pytest.raises(NetworkError, match="parent"):
        build_network("m", "10.89.7.0/24", driver="macvlan")
    with pytest.raises(NetworkError, match="unknown driver"):
        build_network("m", "10.89.7.0/24", driver="overlay", device="x")


@pytest.mark.parametrize("spec,expected", [
    ("80", [("", 0, 80, "tcp")]),
    ("8080:80", [("", 8080, 80, "tcp")]),
    ("127.0.0.1:8080:80/udp", [("127.0.0.1", 8080, 80, "udp")]),
    ("127.0.0.1::80", [("127.0.0.1", 0, 80, "tcp")]),
    ("0.0.0.0:81:80", [("", 81, 80, "tcp")]),
    ("8000-8001:90-91", [("", 8000, 90, "tcp"), ("", 8001, 91, "tcp")]),
])
def test_publish_forms(spec, expected):
    got = [(m["hostIP"], m["hostPort"], m["containerPort"], m["protocol"]) for m in parse_publish(spec)]
    assert got == expected


@pytest.mark.parametrize("spec,fragment", [
    ("80/sctp", "protocol"), ("a:b:c:d", "too many"), ("x:80", "not a number"),
    ("70000:80", "out of range"), ("1-3:1-2", "differ"), ("300.1.1.1:80:80", "not an IP"),
    ("[::1]:80:80", "IPv4")])
def test_bad_publish(spec, fragment):
    with pytest.raises(NetworkError, match=fragment) as err:
        parse_publish(spec)
    assert err.value.field == "--publish"


def test_publish_all_adds_exposed_ports_once():
    maps = build_port_mappings(["8080:80"], ["80/tcp", "53/udp", "9000-9001"], publish_all=True)
    assert [(m["hostPort"], m["containerPort"], m["protocol"]) for m in maps] == [
        (8080, 80, "tcp"), (0, 53, "udp"), (0, 9000, "tcp"), (0, 9001, "tcp")]
    assert build_port_mappings([], ["80/tcp"], publish_all=False) == []
    assert parse_expose("53/udp") == [(53, "udp")]
    with pytest.raises(NetworkError, match="twice"):
        build_port_mappings(["8080:80", "8080:81"])


def test_clash_and_format():
    a = parse_publish("8080:80")[0]
    assert clash(a, parse_publish("127.0.0.1:8080:81")[0])
    assert not clash(a, parse_publish("8080:80/udp")[0])
    assert not clash(parse_publish("127.0.0.1:8080:80")[0], parse_publish("127.0.0.2:8080:80")[0])
    assert format_mapping(a) == "80/tcp -> 0.0.0.0:8080"


def test_resolv_drops_loopback_servers_and_takes_overrides():
    host = "# comment\nsearch corp.example\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.0.0.2\noptions ndots:2\n"
    assert build_resolv(host) == "search corp.example\nnameserver 10.0.0.2\noptions ndots:2\n"
    assert build_resolv(host, dns=["10.9.9.9"], dns_search=["a.test", "b.test"]) == \
        "search a.test b.test\nnameserver 10.9.9.9\noptions ndots:2\n"
    assert "127.0.0.53" in build_resolv(host, keep_loopback=True)
    assert build_resolv(host, dns_search=["."]).startswith("nameserver")


def test_hosts_lists_self_extra_then_peers():
    text = build_hosts([("10.89.0.2", ["h", "web", "h"])], [("10.89.0.3", ["db"])], [("gw", "10.89.0.1")])
    lines = text.splitlines()
    assert lines[0].split() == ["127.0.0.1", "localhost"]
    assert lines[2:] == ["10.89.0.2\th web", "10.89.0.1\tgw", "10.89.0.3\tdb"]
    host = build_host_mode_hosts("127.0.0.1 localhost", "box", [("x", "1.2.3.4")])
    assert host.splitlines() == ["127.0.0.1 localhost", "1.2.3.4\tx", "127.0.1.1\tbox"]


@pytest.mark.parametrize("spec,expected", [
    ("db:10.1.1.1", ("db", "10.1.1.1")), ("db=10.1.1.1", ("db", "10.1.1.1")),
    ("gw:host-gateway", ("gw", "host-gateway")), ("v6=[::1]", ("v6", "::1"))])
def test_add_host(spec, expected):
    assert parse_add_host(spec) == expected


@pytest.mark.parametrize("spec", ["db", "db:", "db:1.2.3", ":1.1.1.1", "a b:1.1.1.1"])
def test_bad_add_host(spec):
    with pytest.raises(NetworkError) as err:
        parse_add_host(spec)
    assert err.value.field == "--add-host"


def test_write_in_place_keeps_inode_and_refuses_symlinks(tmp_path):
    path = tmp_path / "hosts"
    apply_write_in_place(str(path), "one long line\n")
    inode = os.stat(path).st_ino
    apply_write_in_place(str(path), "two\n")
    assert path.read_text() == "two\n" and os.stat(path).st_ino == inode
    os.symlink(str(tmp_path / "elsewhere"), str(tmp_path / "link"))
    with pytest.raises(OSError):
        apply_write_in_place(str(tmp_path / "link"), "x")
    assert not (tmp_path / "elsewhere").exists()


def test_plugin_config_gets_only_declared_capabilities():
    conflist = {"cniVersion": "1.0.0", "name": "n", "plugins": []}
    plugin = {"type": "portmap", "capabilities": {"portMappings": True}}
    conf = cni.build_plugin_config(conflist, plugin, {"portMappings": [1], "mac": "x", "ips": []},
                                   {"ips": []})
    assert conf["runtimeConfig"] == {"portMappings": [1]}
    assert conf["name"] == "n" and conf["cniVersion"] == "1.0.0" and conf["prevResult"] == {"ips": []}
    bare = cni.build_plugin_config(conflist, {"type": "firewall"}, {"mac": "x"})
    assert "runtimeConfig" not in bare and "prevResult" not in bare


def test_env_names_everything_the_plugin_needs():
    env = cni.build_env("DEL", "c1", None, "eth1", ["/a", "/b"], {"K": "v"})
    assert env["CNI_COMMAND"] == "DEL" and env["CNI_NETNS"] == "" and env["CNI_PATH"] == "/a:/b"
    assert env["CNI_IFNAME"] == "eth1" and env["CNI_ARGS"] == "K=v" and "/usr/sbin" in env["PATH"]


def test_read_interface_picks_the_sandbox_interface():
    result = {"interfaces": [{"name": "br"}, {"name": "eth0", "mac": "aa", "sandbox": "/ns"}],
              "ips": [{"interface": 1, "address": "10.89.0.9/24", "gateway": "10.89.0.1"}]}
    assert cni.read_interface(result, "eth0") == ("10.89.0.9", 24, "10.89.0.1", "aa")
    assert cni.read_interface({}, "eth0") == (None, None, None, None)


_SAVED = r'''# Generated by iptables-save
*nat
:CNI-6968cdbc22bf9ef9ffc75ace - [0:0]
:CNI-DN-ebf157c6de6017d44f38c - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A POSTROUTING -s 10.89.247.2/32 -m comment --comment "name: \"capsa\" id: \"rb1\"" -j CNI-6968cdbc22bf9ef9ffc75ace
-A POSTROUTING -s 10.89.247.3/32 -m comment --comment "name: \"capsa\" id: \"rb10\"" -j CNI-0000cdbc22bf9ef9ffc75ace
-A CNI-6968cdbc22bf9ef9ffc75ace ! -d 224.0.0.0/4 -m comment --comment "name: \"capsa\" id: \"rb1\"" -j MASQUERADE
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"capsa\" id: \"rb1\"" -m multiport --dports 18099 -j CNI-DN-ebf157c6de6017d44f38c
-A CNI-DN-ebf157c6de6017d44f38c -s 10.89.247.0/24 -p tcp -m comment --comment "name: \"capsa\" id: \"rb1\"" -j CNI-HOSTPORT-SETMARK
-A POSTROUTING -m comment --comment "name: \"other\" id: \"rb1\"" -j MASQUERADE
COMMIT
'''


def test_rule_deletions_take_only_this_containers_rules_and_chains():
    from capsa.engine.network.rules import build_rule_deletions, build_tag
    rules, chains = build_rule_deletions(_SAVED, build_tag("capsa", "rb1"))
    assert [r[0] for r in rules] == ["POSTROUTING", "CNI-6968cdbc22bf9ef9ffc75ace", "CNI-HOSTPORT-DNAT",
                                     "CNI-DN-ebf157c6de6017d44f38c"]
    assert rules[0] == ["POSTROUTING", "-s", "10.89.247.2/32", "-m", "comment", "--comment",
                        'name: "capsa" id: "rb1"', "-j", "CNI-6968cdbc22bf9ef9ffc75ace"]
    # shared chains (CNI-HOSTPORT-SETMARK) are jump targets but never deleted
    assert chains == ["CNI-6968cdbc22bf9ef9ffc75ace", "CNI-DN-ebf157c6de6017d44f38c"]
    assert build_rule_deletions(_SAVED, build_tag("capsa", "nobody")) == ([], [])
