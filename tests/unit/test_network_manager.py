"""NetworkManager against FakeKernel and a fake host: ordering, rollback, caches, hosts files."""
import errno
import json
import os

import pytest

from capsa.engine.network import netns
from capsa.engine.network.manager import NetworkManager, parse_mode
from capsa.errors import KernelError, NetworkError
from capsa.syscalls.fake import FakeKernel
from capsa.syscalls.fs import MNT_DETACH, MS_BIND
from capsa.syscalls.proc import CLONE_NEWNET
from tests.unit.test_network_fakes import FakeHost


@pytest.fixture
def env(tmp_path):
    kernel, host = FakeKernel(), FakeHost()
    manager = NetworkManager(str(tmp_path / "net"), kernel=kernel, host=host,
                             default_subnet="10.89.200.0/24")
    return manager, kernel, host, tmp_path / "net"


def leftovers(root):
    """Everything a container can leave in the state folder, except networks and the lock."""
    found = []
    for folder in ("containers", "cache", "netns", "files"):
        for dirpath, dirs, files in os.walk(str(root / folder)):
            found.extend(os.path.join(dirpath, f) for f in files)
            found.extend(os.path.join(dirpath, d) for d in dirs)
    for dirpath, dirs, files in os.walk(str(root / "ipam")):
        found.extend(os.path.join(dirpath, f) for f in files
                     if f != "lock" and not f.startswith("last_reserved_ip"))
    return found


def test_parse_mode():
    assert parse_mode(None) == ("bridge", None) and parse_mode("bridge") == ("bridge", None)
    assert parse_mode("none") == ("none", None) and parse_mode("host") == ("host", None)
    assert parse_mode("container:web") == ("container", "web")
    assert parse_mode("ns:/proc/1/ns/net") == ("ns", "/proc/1/ns/net")
    assert parse_mode("mynet") == ("network", "mynet")
    for bad in ("container:", "ns:", "a/b"):
        with pytest.raises(NetworkError):
            parse_mode(bad)


def test_create_netns_pins_thread_namespace_and_returns_home():
    kernel = FakeKernel()
    netns.apply_create_netns(kernel, "/state/netns/c1")
    assert kernel.names() == ["open", "close", "open", "unshare", "mount", "setns", "close"]
    assert kernel.calls_of("unshare") == [(CLONE_NEWNET,)]
    assert kernel.calls_of("mount") == [("/proc/thread-self/ns/net", "/state/netns/c1", None, MS_BIND)]
    assert kernel.calls_of("setns")[0][1] == CLONE_NEWNET
    assert kernel.fd_paths[kernel.calls_of("setns")[0][0]] == "/proc/thread-self/ns/net"


def test_create_netns_failure_still_goes_home_and_removes_the_file(tmp_path):
    kernel = FakeKernel()
    kernel.failures["mount"] = errno.EPERM
    target = tmp_path / "ns"
    target.write_text("")
    with pytest.raises(NetworkError, match="cannot pin"):
        netns.apply_create_netns(kernel, str(target))
    assert "setns" in kernel.names() and not target.exists()


def test_remove_netns_tolerates_an_unmounted_file(tmp_path):
    kernel = FakeKernel()
    kernel.failures["umount2"] = errno.EINVAL
    target = tmp_path / "ns"
    target.write_text("")
    netns.apply_remove_netns(kernel, str(target))
    assert kernel.calls_of("umount2") == [(str(target), MNT_DETACH)] and not target.exists()
    kernel.failures["umount2"] = errno.EBUSY
    with pytest.raises(KernelError):
        netns.apply_remove_netns(kernel, str(target))


def test_create_list_inspect_remove(env):
    manager, kernel, host, root = env
    view = manager.create("web", subnet="10.89.10.0/24", mtu=1400)
    assert view["bridge"] == "capsa0" and view["gateway"] == "10.89.10.1" and view["mtu"] == 1400
    auto = manager.create("auto")
    assert auto["subnet"] == "10.89.0.0/24" and auto["bridge"] == "capsa1"
    assert [n["name"] for n in manager.list()] == ["auto", "web"]
    assert manager.inspect("web")["containers"] == {}
    conflist = json.loads((root / "networks" / "web.conflist").read_text())
    assert conflist["plugins"][0]["ipam"]["dataDir"] == str(root / "ipam")
    host.bridges.add("capsa0")
    host.links.add("capsa0")
    manager.remove("web")
    assert host.deleted_links == ["capsa0"] and not (root / "networks" / "web.conflist").exists()
    with pytest.raises(NetworkError, match="not found"):
        manager.inspect("web")


def test_create_refuses_overlap_duplicates_and_leaves_nothing(env):
    manager, kernel, host, root = env
    manager.create("a", subnet="10.89.10.0/24")
    with pytest.raises(NetworkError, match="exists already"):
        manager.create("a", subnet="10.89.11.0/24")
    with pytest.raises(NetworkError, match="overlaps network 'a'"):
        manager.create("b", subnet="10.89.0.0/16")
    with pytest.raises(NetworkError, match="overlaps the host route"):
        manager.create("c", subnet="192.0.2.0/25")
    with pytest.raises(NetworkError, match="need --subnet"):
        manager.create("d", gateway="10.89.1.1")
    assert sorted(os.listdir(str(root / "networks"))) == ["a.conflist"]


def test_attach_default_network_creates_it_and_writes_files(env):
    manager, kernel, host, root = env
    got = manager.attach("c1", "web", "bridge", {"hostname": "h1", "aliases": ["www"],
                                                 "dns_search": ["x.test"],
                                                 "add_hosts": ["gw:host-gateway", "db:10.1.1.1"]})
    assert manager.inspect("capsa")["subnet"] == "10.89.200.0/24"
    assert got["netns"] == str(root / "netns" / "c1")
    assert got["interfaces"] == [{"network": "capsa", "ifname": "eth0", "ip": "10.89.200.2",
                                  "prefix": 24, "gateway": "10.89.200.1", "mac": "0a:58:00:00:00:02"}]
    # tuning only runs when a MAC address is asked for, portmap only when ports are published
    assert host.commands("ADD") == [("loopback", "ADD"), ("bridge", "ADD"), ("firewall", "ADD")]
    # each plugin got the previous plugin's result
    assert host.calls[2][4]["prevResult"]["ips"][0]["address"] == "10.89.200.2/24"
    assert "unshare" in kernel.names() and "mount" in kernel.names()
    hosts = open(got["hosts"]).read().splitlines()
    assert "10.89.200.2\th1 web www" in hosts and "10.89.200.1\tgw" in hosts and "10.1.1.1\tdb" in hosts
    assert open(got["resolv"]).read() == "search x.test\nnameserver 10.0.0.2\noptions edns0\n"
    assert open(got["hostname"]).read() == "h1\n"
    cache = json.loads((root / "cache" / "c1" / "capsa.json").read_text())
    assert cache["result"]["ips"][0]["address"] == "10.89.200.2/24" and cache["ifName"] == "eth0"
    assert (root / "ipam" / "capsa" / "10.89.200.2").exists()


def test_detach_deletes_in_reverse_with_cached_result_and_leaves_nothing(env):
    manager, kernel, host, root = env
    manager.attach("c1", "web", "bridge", {"publish": ["8080:80"]})
    del host.calls[:]
    manager.detach("c1")
    # the firewall plugin's DEL is capsa's one iptables-restore (its two rules, by address)
    assert host.commands() == [("portmap", "DEL"), ("bridge", "DEL")]
    for call in host.calls:
        assert call[4]["prevResult"]["ips"][0]["address"] == "10.89.200.2/24"
    assert host.calls[0][4]["runtimeConfig"]["portMappings"][0]["hostPort"] == 8080
    assert host.rule_addresses == ["10.89.200.2"]
    assert kernel.calls_of("umount2") == [(str(root / "netns" / "c1"), MNT_DETACH)]
    # the fake namespace file is no mount point: as after a reboot, DEL runs without CNI_NETNS
    # and the rules the bridge plugin tagged with this container are swept
    assert host.rule_sweeps == ['name: \\"capsa\\" id: \\"c1\\"']
    assert leftovers(root) == []
    manager.detach("c1")  # idempotent


def test_peers_on_a_user_network_see_each_other_and_forget_the_departed(env):
    manager, kernel, host, root = env
    manager.create("app", subnet="10.89.20.0/24")
    a = manager.attach("ca", "alpha", "app", {"hostname": "ha", "aliases": ["first"]})
    inode = os.stat(a["hosts"]).st_ino
    b = manager.attach("cb", "beta", "app", {"hostname": "hb"})
    assert "10.89.20.3\tbeta hb" in open(a["hosts"]).read().splitlines()
    assert "10.89.20.2\talpha first ha" in open(b["hosts"]).read().splitlines()
    assert os.stat(a["hosts"]).st_ino == inode
    manager.detach("cb")
    assert "beta" not in open(a["hosts"]).read()
    assert os.stat(a["hosts"]).st_ino == inode


def test_default_network_peers_are_not_in_hosts(env):
    manager, kernel, host, root = env
    a = manager.attach("ca", "alpha", "bridge", {})
    manager.attach("cb", "beta", "bridge", {})
    assert "beta" not in open(a["hosts"]).read()


def test_portmap_runs_only_for_published_ports_and_del_matches_add(env):
    manager, kernel, host, root = env
    manager.attach("c1", "a", "bridge", {})
    manager.attach("c2", "b", "bridge", {"publish": ["8080:80"]})
    assert [c[0] for c in host.calls if c[2] == "c1"] == ["loopback", "bridge", "firewall"]
    # the firewall's chains exist after c1: its ADD for c2 is capsa's restore, not the plugin
    assert [c[0] for c in host.calls if c[2] == "c2"] == ["loopback", "bridge", "portmap"]
    assert host.firewall_adds == ["10.89.200.3"]
    # the stored network conflist keeps portmap for the next container that publishes
    stored = json.loads((root / "networks" / "capsa.conflist").read_text())
    assert "portmap" in [p["type"] for p in stored["plugins"]]
    del host.calls[:]
    manager.detach("c1")
    manager.detach("c2")
    assert [(c[0], c[2]) for c in host.calls] == [
        ("bridge", "c1"), ("portmap", "c2"), ("bridge", "c2")]
    assert leftovers(root) == []


def test_default_network_containers_leave_other_hosts_files_alone(env):
    manager, kernel, host, root = env
    manager.create("app", subnet="10.89.21.0/24")
    peer = manager.attach("cp", "peer", "app", {})
    with open(peer["hosts"], "a") as f:
        f.write("# marker\n")
    manager.attach("c1", "a", "bridge", {})
    manager.detach("c1")
    assert open(peer["hosts"]).read().endswith("# marker\n")
    # a container on a user network does rewrite its peers' files (and drops the marker)
    manager.attach("c2", "b", "app", {})
    assert "# marker" not in open(peer["hosts"]).read()
    assert "\tb " in open(peer["hosts"]).read() or "\tb\n" in open(peer["hosts"]).read()


def test_static_ip_and_mac(env):
    manager, kernel, host, root = env
    manager.create("app", subnet="10.89.21.0/24")
    got = manager.attach("c1", "x", "app", {"ip": "10.89.21.77", "mac": "02:42:AC:11:00:09"})
    assert got["interfaces"][0]["ip"] == "10.89.21.77" and got["interfaces"][0]["mac"] == "02:42:ac:11:00:09"
    bridge_conf = [c[4] for c in host.calls if c[0] == "bridge"][0]
    assert bridge_conf["runtimeConfig"] == {"ips": ["10.89.21.77/24"]}
    tuning_conf = [c[4] for c in host.calls if c[0] == "tuning"][0]
    assert tuning_conf["runtimeConfig"] == {"mac": "02:42:ac:11:00:09"}
    with pytest.raises(NetworkError, match="taken by container x"):
        manager.attach("c2", "y", "app", {"ip": "10.89.21.77"})
    for bad, fragment in (("10.89.22.5", "not a usable"), ("10.89.21.1", "gateway"), ("zz", "not an IP")):
        with pytest.raises(NetworkError, match=fragment):
            manager.attach("c3", "z", "app", {"ip": bad})
    with pytest.raises(NetworkError, match="unicast"):
        manager.attach("c3", "z", "app", {"mac": "01:00:00:00:00:01"})
    assert not os.path.exists(str(root / "containers" / "c3.json"))


@pytest.mark.parametrize("options,fragment", [
    ({"publish": ["8080:80"]}, "in use on the host"),
    ({"publish": ["9090:80"]}, "published by container first"),
    ({"publish": ["80/sctp"]}, "protocol"),
    ({"dns": ["not-an-ip"]}, "not an IP"),
    ({"add_hosts": ["nocolon"]}, "NAME:IP"),
    ({"aliases": ["bad alias"]}, "not a valid name"),
])
def test_bad_input_fails_before_anything_is_created(env, options, fragment):
    manager, kernel, host, root = env
    host.taken.add((8080, "tcp"))
    manager.attach("c0", "first", "bridge", {"publish": ["9090:80"]})
    before = (len(kernel.calls), len(host.calls), sorted(leftovers(root)))
    with pytest.raises(NetworkError, match=fragment):
        manager.attach("c1", "second", "bridge", options)
    assert (len(kernel.calls), len(host.calls), sorted(leftovers(root))) == before


def test_unknown_network_and_missing_plugin_leave_nothing(env):
    manager, kernel, host, root = env
    with pytest.raises(NetworkError, match="network 'nope' not found"):
        manager.attach("c1", "x", "nope", {})
    manager.create("app", subnet="10.89.22.0/24")
    host.installed.discard("firewall")
    with pytest.raises(NetworkError, match="'firewall' not found"):
        manager.attach("c1", "x", "app", {})
    assert kernel.calls == [] and host.calls == [] and leftovers(root) == []


def test_plugin_failure_mid_chain_rolls_everything_back(env):
    manager, kernel, host, root = env
    manager.create("app", subnet="10.89.23.0/24")
    host.failures[("portmap", "ADD")] = "port 80 busy"
    with pytest.raises(NetworkError, match="CNI plugin portmap ADD failed: port 80 busy"):
        manager.attach("c1", "x", "app", {"publish": ["8081:80"]})
    assert host.commands("DEL") == [("portmap", "DEL"), ("bridge", "DEL")]
    assert host.rule_sweeps == ['name: \\"app\\" id: \\"c1\\"']
    assert host.rule_addresses == ["10.89.23.2"]
    # DEL got the last result the chain produced (the bridge's) as prevResult
    assert host.calls[-1][4]["prevResult"]["ips"][0]["address"] == "10.89.23.2/24"
    assert "umount2" in kernel.names() and leftovers(root) == []


def test_failed_del_keeps_the_record_for_a_retry_and_releases_the_lease(env):
    manager, kernel, host, root = env
    manager.create("app", subnet="10.89.24.0/24")
    manager.attach("c1", "x", "app", {})
    host.failures[("bridge", "DEL")] = "iptables busy"
    with pytest.raises(NetworkError, match="iptables busy"):
        manager.detach("c1")
    record = json.loads((root / "containers" / "c1.json").read_text())
    assert record["status"] == "detach-failed"
    assert not (root / "ipam" / "app" / "10.89.24.2").exists()
    # the rules were swept although DEL failed
    assert host.rule_addresses == ["10.89.24.2"]
    del host.failures[("bridge", "DEL")]
    assert manager.cleanup_stale() == ["container c1"]
    assert leftovers(root) == []


def test_none_host_container_and_ns_modes(env, tmp_path):
    manager, kernel, host, root = env
    none = manager.attach("cn", "n", "none", {"hostname": "nn"})
    assert none["netns"] == str(root / "netns" / "cn") and none["interfaces"] == []
    assert host.commands() == [("loopback", "ADD")]
    assert "127.0.1.1\tnn n" in open(none["hosts"]).read()
    shared = manager.attach("cs", "s", "container:n", {})
    assert shared["netns"] == none["netns"] and shared["hosts"] == none["hosts"]
    on_host = manager.attach("ch", "h", "host", {"hostname": "hh"})
    assert on_host["netns"] is None and "127.0.0.53" in open(on_host["resolv"]).read()
    assert open(on_host["hosts"]).read().startswith("127.0.0.1 localhost\n")
    pinned = tmp_path / "pinned"
    pinned.write_text("")
    joined = manager.attach("cj", "j", "ns:" + str(pinned), {})
    assert joined["netns"] == str(pinned)
    with pytest.raises(NetworkError, match="cannot be published"):
        manager.attach("cx", "x", "none", {"publish": ["80"]})
    with pytest.raises(NetworkError, match="does not exist"):
        manager.attach("cx", "x", "ns:/nonexistent/ns", {})
    with pytest.raises(NetworkError, match="no attached container"):
        manager.attach("cx", "x", "container:ghost", {})
    for cid in ("cs", "cj", "ch", "cn"):
        manager.detach(cid)
    umounted = [c[0] for c in kernel.calls_of("umount2")]
    assert umounted == [none["netns"]] and pinned.exists() and leftovers(root) == []


def test_attach_twice_is_refused(env):
    manager, kernel, host, root = env
    manager.attach("c1", "x", "none", {})
    with pytest.raises(NetworkError, match="attached already"):
        manager.attach("c1", "x", "none", {})


def test_publish_all_picks_host_ports(env):
    manager, kernel, host, root = env
    got = manager.attach("c1", "x", "bridge", {"publish_all": True, "expose": ["80/tcp", "53/udp"]})
    assert [(p["hostPort"], p["containerPort"], p["protocol"]) for p in got["ports"]] == [
        (40001, 80, "tcp"), (40002, 53, "udp")]
    assert manager.container("x")["ports"] == got["ports"]
    # the kernel offers a port another container publishes: capsa asks again
    host.next_port = 40000
    again = manager.attach("c2", "y", "bridge", {"publish_all": True, "expose": ["80/tcp"]})
    assert again["ports"][0]["hostPort"] == 40002  # 40001/tcp is taken, 40002 only for udp


def test_internal_network_cannot_publish(env):
    manager, kernel, host, root = env
    manager.create("in", subnet="10.89.25.0/24", internal=True)
    with pytest.raises(NetworkError, match="cannot publish"):
        manager.attach("c1", "x", "in", {"publish": ["8088:80"]})
    assert leftovers(root) == []


def test_connect_and_disconnect(env):
    manager, kernel, host, root = env
    manager.create("front", subnet="10.89.26.0/24")
    manager.create("back", subnet="10.89.27.0/24")
    manager.attach("c1", "web", "front", {})
    db = manager.attach("c2", "db", "back", {})
    got = manager.connect("web", "back", aliases=["api"], ip="10.89.27.9")
    assert [(i["network"], i["ifname"], i["ip"]) for i in got["interfaces"]] == [
        ("front", "eth0", "10.89.26.2"), ("back", "eth1", "10.89.27.9")]
    assert "10.89.27.9\tweb api c1" in open(db["hosts"]).read().splitlines()
    with pytest.raises(NetworkError, match="already"):
        manager.connect("web", "back")
    assert manager.inspect("back")["containers"]["c1"]["ip"] == "10.89.27.9"
    with pytest.raises(NetworkError, match="attached containers: web, db"):
        manager.remove("back")
    manager.disconnect("c1", "back")
    assert "web" not in open(db["hosts"]).read()
    assert not (root / "ipam" / "back" / "10.89.27.9").exists()
    assert not (root / "cache" / "c1" / "back.json").exists()
    with pytest.raises(NetworkError, match="not on network"):
        manager.disconnect("c1", "back")


def test_connect_failure_is_rolled_back(env):
    manager, kernel, host, root = env
    manager.create("front", subnet="10.89.28.0/24")
    manager.create("back", subnet="10.89.29.0/24")
    manager.attach("c1", "web", "front", {})
    # someone flushed the firewall's chains: its plugin runs again, and fails
    host.firewall_chains = False
    host.failures[("firewall", "ADD")] = "no"
    with pytest.raises(NetworkError):
        manager.connect("c1", "back")
    assert [n["network"] for n in manager.container("c1")["interfaces"]] == ["front"]
    assert os.listdir(str(root / "ipam" / "back")) == []


def test_cleanup_stale_undoes_a_crashed_attach_and_orphans(env):
    manager, kernel, host, root = env
    manager.create("app", subnet="10.89.30.0/24")
    host.failures[("firewall", "ADD")] = "boom"
    # simulate capsa killed mid-attach: the record stays "attaching" with a dead owner
    real_teardown = manager._teardown
    manager._teardown = lambda cid: None
    with pytest.raises(NetworkError):
        manager.attach("c1", "x", "app", {})
    manager._teardown = real_teardown
    del host.failures[("firewall", "ADD")]
    assert json.loads((root / "containers" / "c1.json").read_text())["status"] == "attaching"
    assert manager.cleanup_stale() == []           # its owner still runs: left alone
    host.dead_owners.add((4242, 99))
    (root / "netns" / "orphan").write_text("")
    os.makedirs(str(root / "files" / "orphan"))
    (root / "ipam" / "app" / "10.89.30.99").write_text("orphan\r\neth0")
    removed = manager.cleanup_stale()
    assert removed == ["container c1", "netns orphan", "files orphan", "lease app/10.89.30.99"]
    assert ("bridge", "DEL") in host.commands() and leftovers(root) == []


def test_cleanup_stale_with_live_ids_detaches_the_dead(env):
    manager, kernel, host, root = env
    manager.attach("c1", "x", "bridge", {})
    manager.attach("c2", "y", "bridge", {})
    assert manager.cleanup_stale(live_ids=["c2"]) == ["container c1"]
    assert [n for n in manager.inspect("capsa")["containers"]] == ["c2"]


def test_check_runs_check_with_cached_result(env):
    manager, kernel, host, root = env
    manager.attach("c1", "x", "bridge", {})
    manager.check("c1")
    assert host.commands("CHECK") == [("bridge", "CHECK"), ("firewall", "CHECK")]
    host.failures[("bridge", "CHECK")] = "veth gone"
    with pytest.raises(NetworkError, match="veth gone"):
        manager.check("c1")


def test_prune_keeps_default_and_busy_networks(env):
    manager, kernel, host, root = env
    manager.create("idle", subnet="10.89.31.0/24")
    manager.create("busy", subnet="10.89.32.0/24")
    manager.attach("c1", "x", "busy", {})
    manager.attach("c2", "y", "bridge", {})
    manager.detach("c2")
    assert manager.prune() == ["idle"]
    assert [n["name"] for n in manager.list()] == ["busy", "capsa"]


def test_bad_container_id(env):
    manager = env[0]
    with pytest.raises(NetworkError, match="container id"):
        manager.attach("../x", "x", "none", {})


def test_cleanup_stale_deletes_from_an_orphan_cache_and_sweeps_its_rules(env):
    manager, kernel, host, root = env
    manager.attach("c1", "x", "bridge", {})
    cache = json.loads((root / "cache" / "c1" / "capsa.json").read_text())
    os.makedirs(str(root / "cache" / "ghost"))
    cache["containerId"] = "ghost"
    (root / "cache" / "ghost" / "capsa.json").write_text(json.dumps(cache))
    del host.calls[:]
    assert manager.cleanup_stale() == ["cache ghost"]
    # the cache holds the chain ADD ran (no portmap: nothing was published), DEL runs that chain
    assert [(c[0], c[1], c[2]) for c in host.calls] == [("bridge", "DEL", "ghost")]
    assert host.rule_sweeps == ['name: \\"capsa\\" id: \\"ghost\\"']
    assert host.rule_addresses == [cache["result"]["ips"][0]["address"].split("/")[0]]
    assert not (root / "cache" / "ghost").exists() and (root / "cache" / "c1").exists()


def test_loopback_runs_beside_the_bridge_and_its_failure_undoes_the_attach(env):
    manager, kernel, host, root = env
    host.failures[("loopback", "ADD")] = "lo stays down"
    with pytest.raises(NetworkError, match="CNI plugin loopback ADD failed: lo stays down"):
        manager.attach("c1", "x", "bridge", {})
    # loopback was started first, the bridge chain ran while it was pending, then all was undone
    assert host.commands("ADD")[:2] == [("loopback", "ADD"), ("bridge", "ADD")]
    assert ("bridge", "DEL") in host.commands() and leftovers(root) == []


def test_a_bridge_failure_is_reported_even_while_loopback_is_pending(env):
    manager, kernel, host, root = env
    host.failures[("bridge", "ADD")] = "no bridge"
    host.failures[("loopback", "ADD")] = "no lo"
    with pytest.raises(NetworkError, match="bridge ADD failed: no bridge"):
        manager.attach("c1", "x", "bridge", {})
    assert leftovers(root) == []


def _pin(monkeypatch, in_use):
    """The namespace file as a real mount point (FakeKernel mounts nothing), and whether a
    process still lives in it."""
    from capsa.engine.network import manager as module
    monkeypatch.setattr(module, "read_pinned", lambda path: True)
    monkeypatch.setattr(module, "read_in_use", lambda path: in_use)


def _del_view(host, kernel):
    """(type, CNI_NETNS, umount2 calls so far) of every DEL, as the plugin saw it."""
    seen = []
    run = host.run_plugin

    def spy(path, env, stdin):
        if env["CNI_COMMAND"] == "DEL":
            seen.append((path.rsplit("/", 1)[1], env["CNI_NETNS"], len(kernel.calls_of("umount2"))))
        return run(path, env, stdin)
    host.run_plugin = spy
    return seen


@pytest.mark.parametrize("in_use", [False, True])
def test_del_order_follows_whether_a_process_holds_the_namespace(env, monkeypatch, in_use):
    manager, kernel, host, root = env
    manager.attach("c1", "x", "bridge", {})
    _pin(monkeypatch, in_use=in_use)
    seen = _del_view(host, kernel)
    manager.detach("c1")
    path = str(root / "netns" / "c1")
    if in_use:
        # a holder would keep the namespace and the veth on the bridge: DEL deletes it inside
        assert seen == [("bridge", path, 0)]
    else:
        # unpinned first: the kernel deletes the veth with the namespace, DEL releases the lease
        assert seen == [("bridge", "", 1)]
    assert kernel.calls_of("umount2")[0] == (path, MNT_DETACH)
    assert host.rule_sweeps == ['name: \\"capsa\\" id: \\"c1\\"'] and host.rule_addresses == ["10.89.200.2"]
    assert leftovers(root) == []


def test_detach_waits_for_the_kernel_to_delete_the_veth_and_deletes_a_lingering_one(env, monkeypatch):
    manager, kernel, host, root = env
    manager.attach("c1", "x", "bridge", {})
    manager.attach("c2", "y", "bridge", {})
    _pin(monkeypatch, in_use=False)
    # the fake bridge names no host veth: give the results one, as the real plugin does
    for cid, name in (("c1", "veth0001"), ("c2", "veth0002")):
        path = root / "cache" / cid / "capsa.json"
        cache = json.loads(path.read_text())
        cache["result"]["interfaces"].insert(1, {"name": name, "mac": "02:00:00:00:00:09"})
        path.write_text(json.dumps(cache))
    host.links |= {"veth0001", "veth0002"}
    reads = []
    links = host.read_links

    def dying(reads=reads):
        reads.append(1)
        if len(reads) == 3:
            host.links.discard("veth0001")   # the kernel's worker got to it
        return links()
    host.read_links = dying
    manager.detach("c1")
    assert "veth0001" not in host.links and host.deleted_links == [] and len(reads) >= 3
    manager.veth_timeout = 0.01
    manager.detach("c2")
    # still there after the timeout: something held the namespace; deleting one end deletes both
    assert host.deleted_links == ["veth0002"] and leftovers(root) == []


def test_bridge_masquerade_is_capsas_restore_while_the_cache_keeps_the_plugins_config(env):
    manager, kernel, host, root = env
    manager.attach("c1", "x", "bridge", {})
    bridge = [c[4] for c in host.calls if c[:2] == ("bridge", "ADD")][0]
    assert bridge["ipMasq"] is False and host.masquerades == ["10.89.200.2/24"]
    # DEL inside a living namespace runs the plugin with ipMasq true: it removes those rules
    cache = json.loads((root / "cache" / "c1" / "capsa.json").read_text())
    assert cache["config"]["plugins"][0]["ipMasq"] is True
    manager.create("in", subnet="10.89.31.0/24", internal=True)
    manager.attach("c2", "y", "in", {})
    assert host.masquerades == ["10.89.200.2/24"]
