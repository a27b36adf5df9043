"""A fake host for the network manager: CNI plugins simulated in-process, host facts as data.

The bridge/macvlan fake allocates addresses like host-local does (one lease file per address in
dataDir/<network name>/), so tests that look for leaked leases look at real files.
"""
import ipaddress
import json
import os

from capsa.errors import NetworkError

PLUGINS = ("bridge", "macvlan", "portmap", "firewall", "tuning", "loopback", "host-local")


class FakeHost:
    def __init__(self):
        self.plugin_dirs = ["/fake/cni"]
        self.installed = set(PLUGINS)
        self.calls = []          # (type, command, container id, ifname, stdin conf)
        self.failures = {}       # (type, command) -> message
        self.routes = [("0.0.0.0/0", "eth0"), ("192.0.2.0/24", "eth0")]
        self.links = {"lo", "eth0"}
        self.bridges = set()
        self.deleted_links = []
        self.taken = set()       # (port, proto) bound by host processes
        self.texts = {"/etc/resolv.conf": "search example.com\nnameserver 127.0.0.53\n"
                                          "nameserver 10.0.0.2\noptions edns0\n",
                      "/etc/hosts": "127.0.0.1 localhost\n"}
        self.dead_owners = set()
        self.next_port = 40000
        self.rule_sweeps = []    # tags passed to remove_tagged_rules / remove_rules
        self.rule_addresses = []  # firewall addresses passed to remove_rules
        self.firewall_chains = False  # made by the first firewall ADD, as on a real host
        self.firewall_adds = []   # addresses whose firewall rules add_container_rules added
        self.masquerades = []     # "IP/PREFIX" whose masquerade rules add_container_rules added

    def find_plugin(self, name):
        if name not in self.installed:
            raise NetworkError("CNI plugin %r not found in /fake/cni" % name)
        return "/fake/cni/" + name

    def run_plugin(self, path, env, stdin):
        conf = json.loads(stdin)
        kind = path.rsplit("/", 1)[1]
        command = env["CNI_COMMAND"]
        self.calls.append((kind, command, env["CNI_CONTAINERID"], env["CNI_IFNAME"], conf))
        if (kind, command) in self.failures:
            return 1, json.dumps({"code": 7, "msg": self.failures[(kind, command)]}).encode(), b""
        if kind in ("bridge", "macvlan"):
            if command == "ADD":
                return 0, json.dumps(self._allocate(conf, env)).encode(), b""
            if command == "DEL":
                self._release(conf, env)
            return 0, b"", b""
        if command != "ADD":
            return 0, b"", b""
        if kind == "firewall":
            self.firewall_chains = True
        result = conf.get("prevResult") or {"cniVersion": "1.0.0", "interfaces": [], "ips": []}
        if kind == "tuning" and conf.get("runtimeConfig", {}).get("mac"):
            for iface in result["interfaces"]:
                if iface.get("sandbox"):
                    iface["mac"] = conf["runtimeConfig"]["mac"]
        return 0, json.dumps(result).encode(), b""

    def start_plugin(self, path, env, stdin):
        answer = self.run_plugin(path, env, stdin)
        return lambda: answer

    def _allocate(self, conf, env):
        span = conf["ipam"]["ranges"][0][0]
        net = ipaddress.ip_network(span["subnet"])
        folder = os.path.join(conf["ipam"]["dataDir"], conf["name"])
        os.makedirs(folder, exist_ok=True)
        wanted = conf.get("runtimeConfig", {}).get("ips")
        if wanted:
            candidates = [ipaddress.ip_address(wanted[0].split("/")[0])]
        else:
            start = ipaddress.ip_address(span.get("rangeStart", str(net.network_address + 1)))
            candidates = [a for a in net.hosts() if a >= start and str(a) != span["gateway"]]
        for addr in candidates:
            lease = os.path.join(folder, str(addr))
            if not os.path.exists(lease):
                with open(lease, "w") as handle:
                    handle.write("%s\r\n%s" % (env["CNI_CONTAINERID"], env["CNI_IFNAME"]))
                break
        else:
            raise AssertionError("fake host-local is out of addresses")
        if conf.get("bridge"):
            self.links.add(conf["bridge"])
            self.bridges.add(conf["bridge"])
        return {"cniVersion": "1.0.0",
                "interfaces": [{"name": conf.get("bridge") or conf.get("master"), "mac": "02:00:00:00:00:01"},
                               {"name": env["CNI_IFNAME"], "mac": "0a:58:00:00:00:%02x" % (int(addr) & 0xff),
                                "sandbox": env["CNI_NETNS"]}],
                "ips": [{"interface": 1, "address": "%s/%d" % (addr, net.prefixlen),
                         "gateway": span["gateway"]}],
                "routes": conf["ipam"]["routes"]}

    def _release(self, conf, env):
        folder = os.path.join(conf["ipam"]["dataDir"], conf["name"])
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            path = os.path.join(folder, name)
            with open(path) as handle:
                words = handle.read().split()
            if words == [env["CNI_CONTAINERID"], env["CNI_IFNAME"]]:
                os.unlink(path)

    def commands(self, command=None):
        return [(c[0], c[1]) for c in self.calls if command is None or c[1] == command]

    def read_routes(self):
        return list(self.routes)

    def read_links(self):
        return set(self.links)

    def is_bridge(self, name):
        return name in self.bridges

    def delete_link(self, name):
        self.deleted_links.append(name)
        self.links.discard(name)

    def remove_tagged_rules(self, tag):
        self.rule_sweeps.append(tag)
        return []

    def remove_rules(self, tags, addresses=()):
        self.rule_sweeps.extend(tags)
        self.rule_addresses.extend(addresses)
        return []

    def start_remove_rules(self, tags, addresses=()):
        removed = self.remove_rules(tags, addresses)
        return lambda: removed

    def add_container_rules(self, network, container_id, masquerade=(), firewall=()):
        self.masquerades.extend(masquerade)
        if self.firewall_chains:
            self.firewall_adds.extend(firewall)
        return self.firewall_chains or not firewall

    def read_text(self, path):
        return self.texts.get(path, "")

    def default_route_device(self):
        return "eth0"

    def port_taken(self, ip, port, proto):
        return (port, proto) in self.taken

    def pick_port(self, ip, proto):
        self.next_port += 1
        return self.next_port

    def owner(self):
        return (4242, 99)

    def owner_alive(self, owner):
        return bool(owner) and tuple(owner) not in self.dead_owners
