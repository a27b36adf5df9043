"""capsa networking on the real kernel: CNI plugins, bridges, NAT, ports, namespaces (root).

All traffic stays on this machine: 10.89.1xx.0/24 bridges the tests create, and 127.0.0.1. Every
test checks the host afterwards: no netns mount, lease, veth on the bridge, bridge or iptables rule.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import pytest

from capsa.engine.network.host import HostSystem
from capsa.engine.network.manager import NetworkManager
from capsa.engine.network.rules import build_tag
from capsa.errors import NetworkError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
CNI_DIR = "/usr/lib/cni"

pytestmark = [pytest.mark.root]


def _missing():
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("iptables-save", "nsenter", "unshare", "ip"):
        if not shutil.which(tool):
            return "needs %s on PATH" % tool
    if not os.path.exists(BUSYBOX):
        return "needs busybox (busybox-static)"
    for plugin in ("bridge", "host-local", "portmap", "firewall", "tuning", "loopback"):
        if not os.access(os.path.join(CNI_DIR, plugin), os.X_OK):
            return "needs the CNI plugin %s in %s (containernetworking-plugins)" % (plugin, CNI_DIR)
    return None


if _missing():
    pytestmark.append(pytest.mark.skip(reason=_missing()))


def sh(*argv, check=True):
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError("%s: %s%s" % (argv, done.stdout, done.stderr))
    return done


def in_netns(netns, *argv, check=True):
    return sh("nsenter", "--net=" + netns, *argv, check=check)


def in_container(view, *argv, check=True):
    """argv in the attachment's netns, with its /etc/hosts and resolv.conf mounted over the host's."""
    script = ("mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/resolv.conf && shift 2 && "
              "exec nsenter --net=\"$0\" \"$@\"")
    return sh("unshare", "-m", "--propagation", "private", "sh", "-c", script, view["netns"],
              view["hosts"], view["resolv"], *argv, check=check)


def free_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


class Net:
    """A manager on a temporary state folder, and the host check that runs when the test ends."""

    def __init__(self, root, default_subnet):
        self.root = str(root)
        self.manager = NetworkManager(self.root, default_subnet=default_subnet)
        self.ids = []
        self.ips = []
        self.bridges = set()
        self.procs = []

    def cid(self):
        cid = "it" + uuid.uuid4().hex[:14]
        self.ids.append(cid)
        return cid

    def attach(self, name, mode, options=None):
        view = self.manager.attach(self.cid(), name, mode, options or {})
        self.ips.extend(i["ip"] for i in view["interfaces"] if i["ip"])
        return view

    def create(self, name, **kwargs):
        view = self.manager.create(name, **kwargs)
        self.bridges.add(view.get("bridge"))
        return view

    def spawn(self, netns, *argv):
        proc = subprocess.Popen(["nsenter", "--net=" + netns] + list(argv),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def leftovers(self, with_bridges=True):
        found = []
        rules = sh("iptables-save").stdout
        for line in rules.splitlines():
            if any(c in line for c in self.ids) or any(ip + "/32" in line for ip in self.ips):
                found.append("rule " + line)
        with open("/proc/self/mountinfo") as handle:
            found.extend("mount " + l.split()[4] for l in handle if self.root in l.split()[4])
        for dirpath, dirs, files in os.walk(os.path.join(self.root, "ipam")):
            found.extend("lease " + f for f in files if f != "lock" and not f.startswith("last_"))
        for folder in ("containers", "netns", "cache", "files"):
            path = os.path.join(self.root, folder)
            found.extend("state %s/%s" % (folder, e) for e in (os.listdir(path) if os.path.isdir(path) else ()))
        for bridge in self.bridges:
            brif = "/sys/class/net/%s/brif" % bridge
            if os.path.isdir(brif):
                found.extend("veth %s on %s" % (v, bridge) for v in os.listdir(brif))
                if with_bridges:
                    found.append("bridge " + bridge)
        return found

    def close(self):
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for cid in self.ids:
            try:
                self.manager.detach(cid)
            except NetworkError:
                pass
        self.manager.cleanup_stale()
        for view in self.manager.list():
            self.bridges.add(view.get("bridge"))
            self.manager.remove(view["name"])


@pytest.fixture
def net(tmp_path):
    state = Net(tmp_path / "network", "10.89.150.0/24")
    try:
        yield state
    finally:
        state.close()
    assert state.leftovers() == []


def test_two_namespaces_reach_each_other_by_ip_and_name(net):
    net.create("itapp", subnet="10.89.151.0/24")
    alpha = net.attach("alpha", "itapp", {"aliases": ["db"], "hostname": "alpha-host"})
    beta = net.attach("beta", "itapp", {})
    assert alpha["interfaces"][0]["ip"] == "10.89.151.2"
    in_netns(beta["netns"], BUSYBOX, "ping", "-c1", "-W2", alpha["interfaces"][0]["ip"])
    for name in ("alpha", "db", "alpha-host"):
        out = in_container(beta, BUSYBOX, "ping", "-c1", "-W2", name).stdout
        assert "10.89.151.2" in out
    # a peer that arrives later shows up in the first one's hosts file
    assert "10.89.151.3\tbeta" in open(alpha["hosts"]).read()
    net.manager.check(net.ids[0])


def test_published_port_answers_from_the_host(net, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("capsa-published\n")
    port = free_port()
    web = net.attach("web", "bridge", {"publish": ["%d:80" % port]})
    assert web["ports"] == [{"hostIP": "", "hostPort": port, "containerPort": 80, "protocol": "tcp"}]
    net.spawn(web["netns"], BUSYBOX, "httpd", "-f", "-p", "80", "-h", str(www))
    gateway = web["interfaces"][0]["gateway"]
    for host_ip in ("127.0.0.1", gateway):
        body = None
        for _ in range(50):
            try:
                body = urllib.request.urlopen("http://%s:%d/" % (host_ip, port), timeout=2).read()
                break
            except OSError:
                time.sleep(0.1)
        assert body == b"capsa-published\n", host_ip
    # the same host port cannot be published twice
    with pytest.raises(NetworkError, match="already published"):
        net.attach("web2", "bridge", {"publish": ["%d:80" % port]})
    net.manager.detach(net.ids[0])
    assert net.leftovers(with_bridges=False) == []


def test_namespace_reaches_a_server_on_the_gateway(net):
    view = net.attach("client", "bridge", {})
    gateway = view["interfaces"][0]["gateway"]
    server = socket.socket()
    server.bind((gateway, 0))
    server.listen(1)
    port = server.getsockname()[1]

    def answer():
        conn, _ = server.accept()
        conn.sendall(b"hello-from-gateway\n")
        conn.close()
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        out = in_netns(view["netns"], BUSYBOX, "nc", "-w", "3", gateway, str(port)).stdout
    finally:
        server.close()
    assert out == "hello-from-gateway\n"
    route = in_netns(view["netns"], "ip", "route", "show", "default").stdout
    assert "via " + gateway in route


def test_none_has_only_loopback_and_it_is_up(net):
    view = net.attach("lonely", "none", {})
    links = in_netns(view["netns"], "ip", "-o", "link").stdout.splitlines()
    assert len(links) == 1 and ": lo:" in links[0] and "UP" in links[0]
    in_netns(view["netns"], BUSYBOX, "ping", "-c1", "-W1", "127.0.0.1")


def test_internal_network_has_no_route_out(net):
    net.create("itinternal", subnet="10.89.152.0/24", internal=True)
    a = net.attach("in-a", "itinternal", {})
    b = net.attach("in-b", "itinternal", {})
    assert in_netns(a["netns"], "ip", "route", "show", "default").stdout.strip() == ""
    out = in_netns(a["netns"], "ip", "route", "get", "192.0.2.1", check=False)
    assert out.returncode != 0 and "unreachable" in out.stderr
    in_netns(a["netns"], BUSYBOX, "ping", "-c1", "-W2", b["interfaces"][0]["ip"])


def test_static_ip_mac_mtu_and_resolv(net):
    net.create("itstatic", subnet="10.89.153.0/24", mtu=1280)
    view = net.attach("fixed", "itstatic", {"ip": "10.89.153.42", "mac": "02:42:0a:59:99:2a",
                                             "dns": ["10.89.153.1"], "dns_search": ["it.test"]})
    link = in_netns(view["netns"], "ip", "-o", "link", "show", "eth0").stdout
    assert "02:42:0a:59:99:2a" in link and "mtu 1280" in link
    assert "10.89.153.42/24" in in_netns(view["netns"], "ip", "-o", "addr", "show", "eth0").stdout
    assert open(view["resolv"]).read().startswith("search it.test\nnameserver 10.89.153.1\n")


def test_connect_and_disconnect_a_second_network(net):
    net.create("itfront", subnet="10.89.154.0/24")
    net.create("itback", subnet="10.89.155.0/24")
    web = net.attach("web", "itfront", {})
    db = net.attach("db", "itback", {})
    net.manager.connect(net.ids[0], "itback")
    in_container(db, BUSYBOX, "ping", "-c1", "-W2", "web")
    net.manager.disconnect(net.ids[0], "itback")
    assert "eth1" not in in_netns(web["netns"], "ip", "-o", "link").stdout
    assert "web" not in open(db["hosts"]).read()


@pytest.mark.parametrize("case", ["bad-name", "overlap", "port-taken", "missing-plugin"])
def test_bad_input_is_one_clear_error_and_leaves_nothing(net, tmp_path, case):
    holder = None
    try:
        if case == "bad-name":
            with pytest.raises(NetworkError, match="network 'nosuchnet' not found"):
                net.attach("x", "nosuchnet", {})
        elif case == "overlap":
            routes = [r for r in HostSystem().read_routes() if not r[0].startswith("0.0.0.0/")]
            with pytest.raises(NetworkError, match="overlaps the host route"):
                net.create("itoverlap", subnet=routes[0][0])
        elif case == "port-taken":
            holder = socket.socket()
            holder.bind(("0.0.0.0", 0))
            holder.listen(1)
            with pytest.raises(NetworkError, match="already in use on the host"):
                net.attach("x", "bridge", {"publish": ["%d:80" % holder.getsockname()[1]]})
        else:
            partial = tmp_path / "cni"
            partial.mkdir()
            for plugin in ("bridge", "host-local", "loopback", "portmap", "tuning"):
                os.symlink(os.path.join(CNI_DIR, plugin), str(partial / plugin))
            net.manager.host = HostSystem([str(partial)])
            with pytest.raises(NetworkError, match="CNI plugin 'firewall' not found") as err:
                net.attach("x", "bridge", {})
            assert "containernetworking-plugins" in err.value.line()
    finally:
        if holder is not None:
            holder.close()
    assert net.leftovers(with_bridges=False) == []


_CRASHER = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from capsa.engine.network.host import HostSystem
from capsa.engine.network.manager import NetworkManager
from capsa.engine.network.rules import build_tag

class Crashing(HostSystem):
    def run_plugin(self, path, env, stdin):
        if path.endswith("/firewall") and env["CNI_COMMAND"] == "ADD":
            os.kill(os.getpid(), 9)
        return HostSystem.run_plugin(self, path, env, stdin)

    def add_container_rules(self, network, container_id, masquerade=(), firewall=()):
        # after the bridge plugin, capsa's restore writes its masquerade and firewall rules
        HostSystem.add_container_rules(self, network, container_id, masquerade, ())
        os.kill(os.getpid(), 9)

NetworkManager(sys.argv[2], host=Crashing()).attach(sys.argv[3], "victim", "itcrash",
                                                    {"publish": [sys.argv[4] + ":80"]})
"""


def test_sigkill_mid_attach_then_cleanup_leaves_nothing(net):
    net.create("itcrash", subnet="10.89.156.0/24")
    cid = net.cid()
    port = free_port()
    done = subprocess.run([sys.executable, "-c", _CRASHER, REPO, net.root, cid, str(port)],
                          capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    net.ips.append("10.89.156.2")
    record = json.load(open(os.path.join(net.root, "containers", cid + ".json")))
    assert record["status"] == "attaching"
    # the crash left real things behind: a pinned namespace, a lease, a veth, port rules
    before = net.leftovers(with_bridges=False)
    assert any(l.startswith("mount ") for l in before) and any(l.startswith("lease ") for l in before)
    assert any(l.startswith("veth ") for l in before) and any(cid in l for l in before if l.startswith("rule"))
    removed = net.manager.cleanup_stale()
    assert removed == ["container " + cid]
    assert net.leftovers(with_bridges=False) == []


@pytest.fixture
def dummy_parent():
    # a veth pair: the kernel here has no dummy driver; deleting one end deletes both
    name = "capsatmv%d" % (os.getpid() % 1000)
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
    try:
        sh("ip", "link", "set", name, "up")
        sh("ip", "link", "set", name + "p", "up")
        yield name
    finally:
        sh("ip", "link", "delete", name, check=False)


def test_macvlan_network_on_a_parent_the_test_made(dummy_parent, net):
    view = net.create("itmacvlan", driver="macvlan", parent=dummy_parent, subnet="10.89.157.0/24")
    assert view["parent"] == dummy_parent
    a = net.attach("mv-a", "itmacvlan", {})
    b = net.attach("mv-b", "itmacvlan", {})
    assert "macvlan" in in_netns(a["netns"], "ip", "-d", "-o", "link", "show", "eth0").stdout
    in_netns(a["netns"], BUSYBOX, "ping", "-c1", "-W2", b["interfaces"][0]["ip"])
    with pytest.raises(NetworkError, match="cannot publish"):
        net.attach("mv-c", "itmacvlan", {"publish": ["80"]})
    with pytest.raises(NetworkError, match="parent interface 'nosuchlink0' does not exist"):
        net.create("itmacvlan2", driver="macvlan", parent="nosuchlink0", subnet="10.89.158.0/24")
    # the parent vanishes under running containers: detach still leaves nothing
    sh("ip", "link", "delete", dummy_parent)
    for cid in net.ids:
        net.manager.detach(cid)
    assert net.leftovers(with_bridges=False) == []


def test_detach_after_the_namespace_vanished_still_removes_nat_rules(net):
    # as after a reboot: the pin is gone, the bridge plugin cannot read the addresses any more
    view = net.attach("rebooted", "bridge", {"publish": ["%d:80" % free_port()]})
    rules = sh("iptables-save").stdout
    assert net.ids[0] in rules
    sh("umount", view["netns"])
    net.manager.detach(net.ids[0])
    assert net.leftovers(with_bridges=False) == []


_ATTACHER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from capsa.engine.network.manager import NetworkManager
from capsa.engine.network.rules import build_tag
view = NetworkManager(sys.argv[2]).attach(sys.argv[3], sys.argv[3], "itconc", {"publish": ["80"]})
print(json.dumps(view))
"""


def test_concurrent_attaches_from_separate_processes_get_distinct_addresses(net):
    net.create("itconc", subnet="10.89.159.0/24")
    cids = [net.cid() for _ in range(4)]
    procs = [subprocess.Popen([sys.executable, "-c", _ATTACHER, REPO, net.root, cid],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for cid in cids]
    views = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        views.append(json.loads(out))
    ips = [v["interfaces"][0]["ip"] for v in views]
    ports = [v["ports"][0]["hostPort"] for v in views]
    net.ips.extend(ips)
    assert len(set(ips)) == 4 and len(set(ports)) == 4
    peers = open(views[0]["hosts"]).read()
    assert all(cid in peers for cid in cids[1:])


def test_container_mode_shares_the_namespace_and_its_files(net):
    owner = net.attach("owner", "bridge", {"hostname": "owner-host"})
    guest = net.attach("guest", "container:owner", {})
    assert guest["netns"] == owner["netns"] and guest["hosts"] == owner["hosts"]
    assert owner["interfaces"][0]["ip"] + "/" in in_netns(guest["netns"], "ip", "-o", "addr").stdout
    net.manager.detach(net.ids[1])
    in_netns(owner["netns"], BUSYBOX, "ping", "-c1", "-W2", owner["interfaces"][0]["gateway"])


class Recording(HostSystem):
    """The real host, noting (plugin, command, CNI_NETNS) of every plugin exec."""

    def __init__(self):
        HostSystem.__init__(self)
        self.seen = []
        self.deleted = []

    def delete_link(self, name):
        self.deleted.append(name)
        return HostSystem.delete_link(self, name)

    def start_plugin(self, path, env, stdin):
        self.seen.append((os.path.basename(path), env["CNI_COMMAND"], env["CNI_NETNS"]))
        return HostSystem.start_plugin(self, path, env, stdin)


def _host_veth(root, cid, network):
    cache = json.load(open(os.path.join(root, "cache", cid, network + ".json")))
    return [i["name"] for i in cache["result"]["interfaces"] if i["name"].startswith("veth")][0]


def test_unused_namespace_is_unpinned_before_del_and_nothing_is_left(net):
    """bridge DEL without a namespace only releases the lease (plugins 1.1.1 cmdDel): capsa's
    one restore removes its masquerade rules and the firewall's, the kernel the veth pair."""
    net.create("itfast", subnet="10.89.157.0/24")
    host = Recording()
    manager = NetworkManager(net.root, host=host)
    ids = [net.cid(), net.cid()]
    for cid in ids:
        view = manager.attach(cid, cid, "itfast", {})
        net.ips.append(view["interfaces"][0]["ip"])
    rules = sh("iptables-save").stdout
    for cid, ip in zip(ids, net.ips):
        assert "-A CNI-FORWARD -s %s/32 -j ACCEPT" % ip in rules
        assert '-A POSTROUTING -s %s/32 -m comment --comment "name: \\"itfast\\" id: \\"%s\\""' % (
            ip, cid) in rules
        # the firewall plugin's CHECK accepts the rules capsa appended for it
        manager.check(cid)
    # the firewall's chains exist after the first attach: the second one's rules are capsa's
    assert ("firewall", "ADD") not in [s[:2] for s in host.seen[-3:]]
    veths = [_host_veth(net.root, cid, "itfast") for cid in ids]
    del host.seen[:]
    for cid, veth in zip(ids, veths):
        manager.detach(cid)
        assert not os.path.exists("/sys/class/net/" + veth)
    assert host.seen == [("bridge", "DEL", ""), ("bridge", "DEL", "")]
    # the kernel deleted the veths with the namespaces; capsa deleted none itself
    assert host.deleted == [] and net.leftovers(with_bridges=False) == []


def test_namespace_in_use_is_torn_down_from_inside(net):
    net.create("itheld", subnet="10.89.158.0/24")
    host = Recording()
    manager = NetworkManager(net.root, host=host)
    cid = net.cid()
    view = manager.attach(cid, cid, "itheld", {})
    net.ips.append(view["interfaces"][0]["ip"])
    veth = _host_veth(net.root, cid, "itheld")
    holder = net.spawn(view["netns"], BUSYBOX, "sleep", "30")
    for _ in range(100):
        if os.readlink("/proc/%d/ns/net" % holder.pid) != os.readlink("/proc/self/ns/net"):
            break
        time.sleep(0.01)
    del host.seen[:]
    manager.detach(cid)
    # unpinning would leave the veth on the bridge while the sleeper keeps the namespace
    assert host.seen == [("bridge", "DEL", view["netns"])]
    assert not os.path.exists("/sys/class/net/" + veth)
    assert net.leftovers(with_bridges=False) == []


def test_rule_sweep_falls_back_to_one_call_per_rule_when_the_restore_fails(net):
    class Stale(HostSystem):
        """iptables-save listing a rule nobody has: the restore's nat commit fails whole."""

        def read_rules(self, table=None):
            text = HostSystem.read_rules(self, table)
            if table is None:
                ghost = ('-A POSTROUTING -s 10.89.159.254/32 -m comment --comment '
                         '"name: \\"itstale\\" id: \\"%s\\"" -j MASQUERADE' % cid)
                text = text.replace("*nat\n", "*nat\n" + ghost + "\n", 1)
            return text
    net.create("itstale", subnet="10.89.159.0/24")
    cid = net.cid()
    manager = NetworkManager(net.root, host=Stale())
    view = manager.attach(cid, cid, "itstale", {})
    net.ips.append(view["interfaces"][0]["ip"])
    removed = manager.host.remove_rules([build_tag("itstale", cid)], net.ips)
    # each table is its own commit: filter's went through; nat's failed whole on the ghost, and
    # its three real rules went one by one, the chain after them
    assert [r.split(" ", 2)[:2] for r in removed if r.startswith("nat: ")] == [["nat:", "-D"]] * 3 + [
        ["nat:", "-F"], ["nat:", "-X"]]
    assert not [l for l in sh("iptables-save").stdout.splitlines()
                if cid in l or net.ips[0] + "/32" in l]
    manager.detach(cid)
    assert net.leftovers(with_bridges=False) == []


def test_capsa_writes_the_masquerade_rules_the_bridge_plugin_writes(net, tmp_path):
    """capsa runs bridge ADD with ipMasq false and restores the plugin's rules itself: the same
    lines, so the plugin's DEL inside a living namespace (and capsa's sweep) remove them."""
    from capsa.engine.network import cni
    from capsa.engine.network.netns import apply_create_netns, apply_remove_netns
    from capsa.syscalls.kernel import Kernel
    net.create("itmasq", subnet="10.89.160.0/24")
    cid = net.cid()
    conflist = json.load(open(os.path.join(net.root, "networks", "itmasq.conflist")))
    bridge = dict(conflist, plugins=[conflist["plugins"][0]])
    assert bridge["plugins"][0]["ipMasq"] is True
    kernel, host, pin = Kernel(), HostSystem(), str(tmp_path / "pluginns")

    def tagged(ip):
        return sorted(l.replace(ip + "/", "IP/") for l in sh("iptables-save", "-t", "nat").stdout
                      .splitlines() if cid in l)
    apply_create_netns(kernel, pin)
    try:
        result = cni.run_add(host, bridge, cid, pin, "eth0")
        net.ips.append(result["ips"][0]["address"].split("/")[0])
        by_plugin = tagged(net.ips[-1])
    finally:
        cni.run_del(host, bridge, cid, pin, "eth0")
        apply_remove_netns(kernel, pin)
    assert tagged(net.ips[-1]) == []
    view = net.manager.attach(cid, cid, "itmasq", {})
    net.ips.append(view["interfaces"][0]["ip"])
    assert len(by_plugin) == 3 and tagged(net.ips[-1]) == by_plugin
    net.manager.detach(cid)


def test_namespace_held_by_an_fd_alone_still_leaves_no_veth(net):
    """read_in_use sees processes, not fds: the unpinned namespace lives on through this test's
    fd, and detach deletes the veth the kernel could not (docs/network.md, Known limits)."""
    net.create("itfd", subnet="10.89.161.0/24")
    host = Recording()
    manager = NetworkManager(net.root, host=host)
    manager.veth_timeout = 0.3
    cid = net.cid()
    view = manager.attach(cid, cid, "itfd", {})
    net.ips.append(view["interfaces"][0]["ip"])
    veth = _host_veth(net.root, cid, "itfd")
    holder = os.open(view["netns"], os.O_RDONLY)
    try:
        del host.seen[:]
        manager.detach(cid)
        assert host.seen == [("bridge", "DEL", "")]
        assert host.deleted == [veth] and not os.path.exists("/sys/class/net/" + veth)
        assert net.leftovers(with_bridges=False) == []
    finally:
        os.close(holder)
