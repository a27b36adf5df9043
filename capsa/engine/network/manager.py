"""NetworkManager: the engine's one entry point to container networking (issue 9).

Owns user networks (CNI conflists), the network namespaces capsa creates, the CNI ADD/DEL of a
container's interfaces, published ports, and the /etc/hosts and resolv.conf the engine bind-mounts.
Kernel changes go through `kernel`, plugins and host probes through `host`; both are injectable.
"""
import os

from capsa.errors import CapsaError, NetworkError
from capsa.engine.network import cni
from capsa.engine.network.conflist import (
    DEFAULT_NETWORK, DEFAULT_SUBNETS, build_bridge_name, build_free_subnet, build_network,
    check_in_subnet, check_name, check_no_overlap, network_view, parse_address, parse_subnet,
    read_facts)
from capsa.engine.network.etcfiles import (
    apply_write_in_place, build_host_mode_hosts, build_hosts, build_resolv, check_dns_servers,
    parse_add_host)
from capsa.engine.network.netns import (
    apply_create_netns, apply_remove_netns, read_in_use, read_pinned)
from capsa.engine.network.rules import build_tag
from capsa.engine.network.ports import build_port_mappings, clash
from capsa.engine.network.store import (
    Store, check_id, read_json, remove_file, remove_tree, write_json)

DEFAULT_ROOT = "/var/lib/capsa/network"
# Modes that get a namespace of their own from capsa; the others reuse one.
_OWN_NETNS = ("bridge", "network", "none")
_LOOPBACK = {"cniVersion": "1.0.0", "name": "loopback", "plugins": [{"type": "loopback"}]}


def parse_mode(mode):
    """--network value -> (kind, argument): bridge, none, host, container, ns, or network NAME."""
    if mode in (None, "", "bridge", "default"):
        return "bridge", None
    if mode in ("none", "host"):
        return mode, None
    for prefix, kind in (("container:", "container"), ("ns:", "ns")):
        if mode.startswith(prefix):
            arg = mode[len(prefix):]
            if not arg:
                raise NetworkError("%r names no %s" % (mode, kind), field="--network",
                                   hint="write --network %sVALUE" % prefix)
            return kind, arg
    return "network", check_name(mode, field="--network", reserved=False)


def _check_mac(mac):
    parts = str(mac).split(":")
    try:
        ok = len(parts) == 6 and all(len(p) == 2 for p in parts) and not int(parts[0], 16) & 1
        [int(p, 16) for p in parts]
    except ValueError:
        ok = False
    if not ok:
        raise NetworkError("%r is not a unicast MAC address" % (mac,), field="--mac-address",
                           hint="write it as 02:42:ac:11:00:02")
    return mac.lower()


def _drop_idle_plugins(network):
    """Each plugin exec costs 3-20 ms at ADD and again at DEL, on every default `capsa run`:
    tuning only sets a requested MAC, portmap only acts on portMappings (without them its ADD
    echoes prevResult). The chain actually run is what the CNI cache keeps, so DEL matches ADD."""
    idle = set()
    if not network["runtime"].get("mac"):
        idle.add("tuning")
    if not network["runtime"].get("portMappings"):
        idle.add("portmap")
    if any(p["type"] in idle for p in network["conflist"]["plugins"]):
        conflist = dict(network["conflist"])
        conflist["plugins"] = [p for p in conflist["plugins"] if p["type"] not in idle]
        network["conflist"] = conflist


def _addresses(result):
    """IPv4 addresses (without prefix) of a CNI result."""
    found = []
    for entry in (result or {}).get("ips") or []:
        address = entry.get("address", "").partition("/")[0]
        if address and ":" not in address:
            found.append(address)
    return found


def _firewall_rules(conflist):
    """Does the chain hold the firewall plugin with its iptables backend? Its DEL is `iptables -D`
    of two CNI-FORWARD rules per address (20-45 ms of execs); capsa's one restore removes the
    same lines instead (rules.build_rule_removals)."""
    return any(p["type"] == "firewall" and p.get("backend", "iptables") == "iptables"
               for p in conflist["plugins"])


def _sweep_of(cid, cached):
    """(tags, addresses) of a container's iptables rules on the cached networks: the bridge
    plugin's masquerade rules (left when DEL runs without a namespace) and the firewall's."""
    tags, addresses = [], []
    for conflist, _, result in cached:
        tags.append(build_tag(conflist["name"], cid))
        if _firewall_rules(conflist):
            addresses.extend(_addresses(result))
    return tags, addresses


def _quiet_del(cached):
    """Do the DELs left to run (no namespace, firewall swept) keep off iptables? portmap's
    does not."""
    return all(p["type"] in ("bridge", "macvlan", "tuning", "firewall")
               for conflist, _, _ in cached for p in conflist["plugins"])


def _on_user_network(record):
    """Peers are listed in hosts files only on user networks (docs/network.md, Known limits):
    a container on the default network alone changes no other container's hosts file."""
    return any(n["name"] != DEFAULT_NETWORK for n in (record or {}).get("networks", []))


class NetworkManager:
    """Every public method takes the state folder's lock; `_` methods expect it held."""

    veth_timeout = 2.0

    def __init__(self, state_root=DEFAULT_ROOT, kernel=None, host=None, default_subnet=None):
        if kernel is None:
            from capsa.syscalls.kernel import Kernel
            kernel = Kernel()
        if host is None:
            from capsa.engine.network.host import HostSystem
            host = HostSystem()
        self.state_root = state_root
        self.store = Store(state_root)
        self.kernel = kernel
        self.host = host
        self.default_subnet = default_subnet

    def _locked(self, fn, *args, **kwargs):
        fd = self.store.lock()
        try:
            return fn(*args, **kwargs)
        finally:
            os.close(fd)

    # ---- networks ------------------------------------------------------------------------
    def _read_network(self, name):
        conflist = read_json(self.store.network_path(name))
        if conflist is None:
            raise NetworkError("network %r not found" % name, field="network",
                               hint="create it with `capsa network create %s`, list with `capsa network ls`"
                               % name)
        return conflist

    def _networks(self):
        found = {}
        for name in self.store.network_names():
            conflist = read_json(self.store.network_path(name))
            if conflist is not None:
                found[name] = conflist
        return found

    def _records(self):
        found = {}
        for cid in self.store.record_ids():
            record = read_json(self.store.record_path(cid))
            if record is not None:
                found[cid] = record
        return found

    def _members(self, name, records):
        members = {}
        for cid, record in sorted(records.items()):
            for iface in record.get("interfaces", []):
                if iface["network"] == name:
                    members[cid] = {"name": record["name"], "ip": iface["ip"], "mac": iface["mac"],
                                    "ifname": iface["ifname"]}
        return members

    def create(self, name, subnet=None, gateway=None, ip_range=None, internal=False, mtu=None,
               driver="bridge", parent=None):
        """A user network; returns what inspect(name) returns."""
        check_name(name)
        return self._locked(self._create, name, subnet, gateway, ip_range, internal, mtu, driver,
                            parent, False)

    def _create(self, name, subnet, gateway, ip_range, internal, mtu, driver, parent, default):
        if os.path.exists(self.store.network_path(name)):
            raise NetworkError("network %r exists already" % name, field="network name",
                               hint="pick another name or `capsa network rm %s`" % name)
        if (gateway or ip_range) and not subnet:
            raise NetworkError("--gateway and --ip-range need --subnet", field="--subnet")
        networks = self._networks()
        used = [(n, read_facts(c)["subnet"]) for n, c in sorted(networks.items())]
        routes = self.host.read_routes()
        if subnet:
            net = parse_subnet(subnet)
            check_no_overlap(net, used, routes)
        else:
            net = build_free_subnet(used, routes, DEFAULT_SUBNETS if default else ())
        links = self.host.read_links()
        if driver == "macvlan":
            device = parent or self.host.default_route_device()
            if not device or device not in links:
                raise NetworkError("parent interface %r does not exist" % (device,), field="--opt parent",
                                   hint="pass -o parent=IFNAME of an existing link")
        else:
            if parent:
                raise NetworkError("-o parent= is for the macvlan driver", field="--opt parent")
            device = build_bridge_name(links | set(read_facts(c).get("device")
                                                   for c in networks.values()))
        import time
        # host-local keeps its leases in dataDir/<network name>/<ip>
        conflist = build_network(name, net, gateway, ip_range, internal, mtu, driver, device,
                                 self.store.ipam,
                                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), default)
        write_json(self.store.network_path(name), conflist)
        return network_view(conflist, {})

    def _ensure_default(self):
        if not os.path.exists(self.store.network_path(DEFAULT_NETWORK)):
            self._create(DEFAULT_NETWORK, self.default_subnet, None, None, False, None, "bridge",
                         None, True)
        return DEFAULT_NETWORK

    def inspect(self, name):
        return self._locked(lambda: network_view(self._read_network(name),
                                                 self._members(name, self._records())))

    def list(self):
        def run():
            records = self._records()
            return [network_view(c, self._members(n, records))
                    for n, c in sorted(self._networks().items())]
        return self._locked(run)

    def remove(self, name):
        self._locked(self._remove, name)

    def _remove(self, name):
        conflist = self._read_network(name)
        members = self._members(name, self._records())
        if members:
            raise NetworkError("network %r has attached containers: %s" % (
                name, ", ".join(m["name"] for m in members.values())), field="network",
                hint="stop or disconnect them first")
        facts = read_facts(conflist)
        if facts["driver"] == "bridge" and facts.get("device") in self.host.read_links() \
                and self.host.is_bridge(facts["device"]):
            self.host.delete_link(facts["device"])
        remove_tree(os.path.join(self.store.ipam, name))
        remove_file(self.store.network_path(name))

    def prune(self):
        """Remove every network without containers except the default one; returns their names."""
        def run():
            records = self._records()
            removed = []
            for name, conflist in sorted(self._networks().items()):
                if name != DEFAULT_NETWORK and not self._members(name, records):
                    self._remove(name)
                    removed.append(name)
            return removed
        return self._locked(run)

    # ---- containers ----------------------------------------------------------------------
    def attach(self, container_id, container_name, mode, options=None):
        """Give a container its network; see docs/network.md for `options` and the result."""
        check_id(container_id)
        return self._locked(self._attach, container_id, container_name or container_id, mode,
                            dict(options or {}))

    def _attach(self, cid, name, mode, options):
        if os.path.exists(self.store.record_path(cid)):
            raise NetworkError("container %s is attached already" % cid, field="container",
                               hint="detach it first")
        kind, arg = parse_mode(mode)
        records = self._records()
        record = self._plan(cid, name, kind, arg, options, records)
        try:
            return self._apply_attach(record, records)
        except BaseException:
            try:
                self._teardown(cid)
            except CapsaError:
                pass
            raise

    def _plan(self, cid, name, kind, arg, options, records):
        """Check everything the user passed before anything is created."""
        hostname = options.get("hostname") or cid[:12]
        aliases = [check_name(a, field="--network-alias", reserved=False)
                   for a in options.get("aliases") or ()]
        record = {"id": cid, "name": name, "mode": kind, "hostname": hostname, "aliases": aliases,
                  "dns": check_dns_servers(options.get("dns")),
                  "dns_search": list(options.get("dns_search") or ()),
                  "add_hosts": [list(parse_add_host(h)) for h in options.get("add_hosts") or ()],
                  "networks": [], "interfaces": [], "ports": [], "netns": None,
                  "owns_netns": kind in _OWN_NETNS, "owns_files": kind != "container",
                  "files": None, "joined": None, "status": "attaching", "owner": list(self.host.owner())}
        publish = options.get("publish") or ()
        if kind not in ("bridge", "network"):
            if publish:
                raise NetworkError("ports cannot be published with --network %s" % kind,
                                   field="--publish", hint="use a bridge network")
            for what in ("ip", "mac"):
                if options.get(what):
                    raise NetworkError("--%s needs a bridge network" % what, field="--" + what)
        if kind == "container":
            target = self._find_record(arg, records)
            if not target.get("netns") or target.get("status") != "attached":
                raise NetworkError("container %r has no network namespace to share" % arg,
                                   field="--network")
            record.update(netns=target["netns"], joined=target["id"], files=target["files"])
            return record
        if kind == "ns":
            if not os.path.isabs(arg) or not os.path.exists(arg):
                raise NetworkError("namespace path %r does not exist" % arg, field="--network",
                                   hint="write --network ns:/proc/PID/ns/net or a pinned namespace file")
            record["netns"] = arg
        if kind == "none" or kind == "ns" or kind == "host":
            return record
        names = [arg] if kind == "network" else [self._ensure_default()]
        for extra in options.get("networks") or ():
            if extra == "bridge":
                extra = self._ensure_default()
            if extra not in names:
                names.append(extra)
        for index, net_name in enumerate(names):
            conflist = self._read_network(net_name)
            cni.check_plugins(self.host, conflist)
            record["networks"].append({"name": net_name, "ifname": "eth%d" % index,
                                       "runtime": {}, "conflist": conflist})
        first = record["networks"][0]
        if options.get("ip"):
            first["runtime"]["ips"] = [self._check_ip(options["ip"], first, records)]
        if options.get("mac"):
            first["runtime"]["mac"] = _check_mac(options["mac"])
        mappings = build_port_mappings(publish, options.get("expose"), options.get("publish_all"))
        if mappings:
            carrier = [n for n in record["networks"]
                       if any(p["type"] == "portmap" for p in n["conflist"]["plugins"])]
            if not carrier:
                raise NetworkError("network %r cannot publish ports (internal or macvlan)" %
                                   first["name"], field="--publish", hint="add a bridge network")
            carrier[0]["runtime"]["portMappings"] = self._check_ports(mappings, records)
            record["ports"] = carrier[0]["runtime"]["portMappings"]
        for network in record["networks"]:
            _drop_idle_plugins(network)
        return record

    def _check_ip(self, text, network, records):
        facts = read_facts(network["conflist"])
        addr = parse_address(text, "--ip")
        net = parse_subnet(facts["subnet"])
        check_in_subnet(addr, net, "--ip")
        if str(addr) == facts["gateway"]:
            raise NetworkError("%s is the gateway of network %r" % (addr, network["name"]), field="--ip")
        for member in self._members(network["name"], records).values():
            if member["ip"] == str(addr):
                raise NetworkError("%s is taken by container %s on network %r" % (
                    addr, member["name"], network["name"]), field="--ip", hint="pick another address")
        return "%s/%d" % (addr, net.prefixlen)

    def _check_ports(self, mappings, records):
        taken = [(r["name"], p) for r in records.values() for p in r.get("ports", [])]
        for mapping in mappings:
            if not mapping["hostPort"]:
                # DNAT binds no socket, so the kernel may offer a port another container publishes
                for _ in range(100):
                    mapping["hostPort"] = self.host.pick_port(mapping["hostIP"], mapping["protocol"])
                    if not any(clash(mapping, other) for owner, other in taken):
                        break
                taken.append(("", mapping))
                continue
            for owner, other in taken:
                if clash(mapping, other):
                    raise NetworkError("host port %d/%s is already published by container %s" % (
                        mapping["hostPort"], mapping["protocol"], owner), field="--publish",
                        hint="pick another host port")
            if self.host.port_taken(mapping["hostIP"], mapping["hostPort"], mapping["protocol"]):
                raise NetworkError("host port %d/%s is already in use on the host" % (
                    mapping["hostPort"], mapping["protocol"]), field="--publish",
                    hint="pick another host port")
        return mappings

    def _find_record(self, ref, records=None):
        records = self._records() if records is None else records
        if ref in records:
            return records[ref]
        named = [r for r in records.values() if r["name"] == ref]
        if not named:
            named = [r for cid, r in records.items() if cid.startswith(ref)]
        if len(named) != 1:
            raise NetworkError("no attached container %r" % ref if not named else
                               "%r names several containers" % ref, field="container")
        return named[0]

    def _save(self, record):
        write_json(self.store.record_path(record["id"]), record)

    def _apply_attach(self, record, records):
        cid = record["id"]
        # The record exists before anything it describes, so cleanup_stale can undo a crash.
        self._save(record)
        if record["owns_files"]:
            record["files"] = self.store.files_dir(cid)
            os.makedirs(record["files"], mode=0o755, exist_ok=True)
        if record["owns_netns"]:
            record["netns"] = self.store.netns_path(cid)
            self._save(record)
            apply_create_netns(self.kernel, record["netns"])
            # lo and the bridge chain's eth0 are independent: loopback (~5 ms) runs beside it
            loopback = cni.start_add(self.host, _LOOPBACK, cid, record["netns"], "lo")
        else:
            loopback = None
        try:
            for network in record["networks"]:
                self._add_network(record, network)
        except BaseException:
            if loopback is not None:
                try:
                    loopback()
                except CapsaError:
                    pass
            raise
        if loopback is not None:
            loopback()
        record["status"] = "attached"
        records[cid] = record
        self._write_files(record, records)
        self._save(record)
        if _on_user_network(record):
            self._refresh_hosts(records, skip=cid)
        return self._view(record)

    def _add_network(self, record, network):
        cid = record["id"]
        cache = self.store.cache_path(cid, network["name"])

        def save(result):
            write_json(cache, {"kind": "cniCacheV1", "containerId": cid, "ifName": network["ifname"],
                               "networkName": network["name"], "config": network["conflist"],
                               "runtimeConfig": network["runtime"], "netns": record["netns"],
                               "result": result})
        conflist = network["conflist"]
        main = conflist["plugins"][0]
        firewall = _firewall_rules(conflist) and \
            not any(p.get("iptablesAdminChainName") for p in conflist["plugins"])
        masquerade = main["type"] == "bridge" and bool(main.get("ipMasq"))
        run = conflist
        if masquerade:
            # bridge ADD's ipMasq is ~9 iptables execs (28 ms of its 43 measured): the plugin gets
            # ipMasq false, capsa's one restore writes the same rules; cache and DEL keep true
            run = dict(conflist, plugins=[dict(main, ipMasq=False)] + conflist["plugins"][1:])
        result = cni.run_add(self.host, run, cid, record["netns"], network["ifname"],
                             network["runtime"], save, ("firewall",) if firewall else ())
        if masquerade or firewall:
            addresses = [e["address"] for e in (result or {}).get("ips") or []
                         if ":" not in e.get("address", "")]
            ready = self.host.add_container_rules(
                conflist["name"], cid, addresses if masquerade else (),
                _addresses(result) if firewall else ())
            if firewall and not ready:
                # the firewall's chains are not there yet (first container on this host)
                only = dict(conflist, plugins=[p for p in conflist["plugins"]
                                               if p["type"] == "firewall"])
                result = cni.run_add(self.host, only, cid, record["netns"], network["ifname"],
                                     network["runtime"], save, prev=result)
        ip, prefix, gateway, mac = cni.read_interface(result or {}, network["ifname"])
        record["interfaces"].append({"network": network["name"], "ifname": network["ifname"],
                                     "ip": ip, "prefix": prefix, "gateway": gateway, "mac": mac})
        self._save(record)

    def _view(self, record):
        files = record.get("files")
        return {"netns": record["netns"] if record["mode"] != "host" else None,
                "hosts": os.path.join(files, "hosts") if files else None,
                "resolv": os.path.join(files, "resolv.conf") if files else None,
                "hostname": os.path.join(files, "hostname") if files else None,
                "interfaces": [dict(i) for i in record["interfaces"]],
                "ports": [dict(p) for p in record["ports"]]}

    def _hosts_text(self, record, records):
        extra = []
        gateway = next((i["gateway"] for i in record["interfaces"] if i.get("gateway")), None)
        for name, ip in record["add_hosts"]:
            if ip == "host-gateway":
                if record["mode"] == "host":
                    ip = "127.0.0.1"
                elif not gateway:
                    continue
                else:
                    ip = gateway
            extra.append((name, ip))
        if record["mode"] == "host":
            return build_host_mode_hosts(self.host.read_text("/etc/hosts"), record["hostname"], extra)
        names = [record["hostname"], record["name"]] + record["aliases"]
        own = [(i["ip"], names) for i in record["interfaces"] if i["ip"]] or [("127.0.1.1", names)]
        peers = []
        mine = set(i["network"] for i in record["interfaces"] if i["network"] != DEFAULT_NETWORK)
        for cid, other in sorted(records.items()):
            if cid == record["id"] or other.get("status") != "attached":
                continue
            for iface in other.get("interfaces", []):
                if iface["network"] in mine and iface["ip"]:
                    peers.append((iface["ip"], [other["name"]] + other["aliases"] + [other["hostname"]]))
        return build_hosts(own, peers, extra)

    def _write_files(self, record, records):
        files = record.get("files")
        if not files or not record["owns_files"]:
            return
        apply_write_in_place(os.path.join(files, "hosts"), self._hosts_text(record, records))
        apply_write_in_place(os.path.join(files, "resolv.conf"), build_resolv(
            self.host.read_text("/etc/resolv.conf"), record["dns"], record["dns_search"],
            keep_loopback=record["mode"] == "host"))
        apply_write_in_place(os.path.join(files, "hostname"), record["hostname"] + "\n")

    def _refresh_hosts(self, records, skip=None):
        """Peers come and go: rewrite every other attached container's hosts file in place."""
        for cid, record in sorted(records.items()):
            if cid != skip and record.get("status") == "attached" and record.get("owns_files") \
                    and record.get("files") and os.path.isdir(record["files"]):
                apply_write_in_place(os.path.join(record["files"], "hosts"),
                                     self._hosts_text(record, records))

    def detach(self, container_id):
        """Undo attach: DEL every network with its cached result, unpin the namespace, drop files.

        Detaching a container that is not attached does nothing (teardown paths call it freely).
        """
        check_id(container_id)
        self._locked(self._detach, container_id)

    def _detach(self, cid):
        record = read_json(self.store.record_path(cid))
        if record is None:
            return
        try:
            self._teardown(cid)
        finally:
            if _on_user_network(record):
                self._refresh_hosts(self._records())

    def _cached(self, cid, network):
        """(conflist, runtimeConfig, result) for DEL: the CNI cache of the chain ADD ran, else
        the record's conflist without a result (no plugin answered)."""
        cache = read_json(self.store.cache_path(cid, network["name"]))
        if cache is not None:
            return cache["config"], cache["runtimeConfig"], cache["result"]
        return network["conflist"], network["runtime"], None

    def _del_network(self, cid, network, netns, cached):
        """DEL one network; its iptables rules are the caller's (_sweep_of, then remove_rules)."""
        conflist, runtime, result = cached
        skip = []
        main = conflist["plugins"][0]
        if main["type"] == "macvlan" and main.get("master") not in self.host.read_links():
            # macvlan <= 1.1 reads the parent's MTU even for DEL and fails once the parent is gone;
            # the macvlan link died with its parent, and the lease is released below.
            skip.append("macvlan")
        if _firewall_rules(conflist):
            skip.append("firewall")
        try:
            cni.run_del(self.host, conflist, cid, netns, network["ifname"], runtime, result, skip)
        finally:
            # host-local keeps one file per lease; DEL may not have reached it (plugin missing).
            self._release_leases(cid, network["name"])

    def _del_and_sweep(self, cid, network, netns):
        cached = self._cached(cid, network)
        try:
            self._del_network(cid, network, netns, cached)
        finally:
            self.host.remove_rules(*_sweep_of(cid, [cached]))
        remove_file(self.store.cache_path(cid, network["name"]))

    def _host_veths(self, cid, record, cached):
        """Host ends of the veth pairs bridge ADD made, from the cached results."""
        names = []
        for conflist, _, result in cached:
            main = conflist["plugins"][0]
            if main["type"] != "bridge":
                continue
            for iface in (result or {}).get("interfaces") or []:
                if not iface.get("sandbox") and iface.get("name") not in (None, main.get("bridge")):
                    names.append(iface["name"])
        return names

    def _await_gone(self, links):
        """The kernel deletes an unpinned namespace's veths in a worker, 16-33 ms later (measured):
        wait, so nothing of the container is on the bridge when detach returns; delete what is
        still there after `veth_timeout` s (a holder read_in_use missed keeps the namespace
        alive)."""
        import time
        deadline = time.monotonic() + self.veth_timeout
        left = set(links) & self.host.read_links()
        while left and time.monotonic() < deadline:
            time.sleep(0.001)
            left &= self.host.read_links()
        for name in sorted(left):
            try:
                self.host.delete_link(name)
            except CapsaError:
                pass

    def _release_leases(self, cid, network, keep=None):
        folder = os.path.join(self.store.ipam, network)
        released = []
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return released
        for name in names:
            if name == "lock" or name.startswith("last_reserved_ip"):
                continue
            path = os.path.join(folder, name)
            try:
                with open(path) as handle:
                    owner = handle.read().split()
            except OSError:
                continue
            if owner and (owner[0] == cid if keep is None else owner[0] not in keep):
                remove_file(path)
                released.append(network + "/" + name)
        return released

    def _teardown(self, cid):
        record = read_json(self.store.record_path(cid))
        if record is None:
            return
        netns = record.get("netns")
        networks = list(reversed(record.get("networks", [])))
        cached = [self._cached(cid, network) for network in networks]
        sweep = _sweep_of(cid, cached)
        veths, pending = [], None
        if record.get("owns_netns"):
            pinned = bool(netns) and read_pinned(netns)
            if pinned and not read_in_use(netns):
                # Unpinned first, the namespace dies and the kernel deletes its veth pairs in a
                # worker; DEL without a namespace is then a lease release (bridge DEL inside it:
                # 60-100 ms, synchronous link deletion and one iptables exec per masquerade rule).
                veths = self._host_veths(cid, record, cached)
                apply_remove_netns(self.kernel, netns)
                pinned = False
                if _quiet_del(cached):
                    # no DEL left touches iptables: the restore runs beside the plugins
                    pending = self.host.start_remove_rules(*sweep)
            live_netns = netns if pinned else ""
        else:
            live_netns = netns if netns and os.path.exists(netns) else ""
        errors = []
        remaining = []
        try:
            for network, cache in zip(networks, cached):
                try:
                    self._del_network(cid, network, live_netns, cache)
                except CapsaError as exc:
                    errors.append(exc)
                    remaining.insert(0, network)
        finally:
            # after DEL: inside a living namespace the bridge plugin removes its own rules first
            if pending is not None:
                pending()
            else:
                self.host.remove_rules(*sweep)
        if record.get("owns_netns") and netns:
            apply_remove_netns(self.kernel, netns)
        if record.get("owns_files") and record.get("files"):
            remove_tree(record["files"])
        if errors:
            for network in networks:
                if network not in remaining:
                    remove_file(self.store.cache_path(cid, network["name"]))
            record.update(status="detach-failed", networks=remaining, owner=None)
            self._save(record)
            self._await_gone(veths)
            raise errors[0]
        remove_tree(os.path.join(self.store.cache, cid))
        remove_file(self.store.record_path(cid))
        self._await_gone(veths)

    def connect(self, container_id, network, aliases=None, ip=None):
        """Add an interface on `network` to an attached container (docker network connect)."""
        return self._locked(self._connect, container_id, network, aliases, ip)

    def _connect(self, ref, name, aliases, ip):
        records = self._records()
        record = self._find_record(ref, records)
        if record["mode"] not in ("bridge", "network") or record.get("status") != "attached":
            raise NetworkError("container %s uses --network %s and cannot be connected" % (
                record["name"], record["mode"]), field="container")
        if name == "bridge":
            name = self._ensure_default()
        if any(n["name"] == name for n in record["networks"]):
            raise NetworkError("container %s is on network %r already" % (record["name"], name),
                               field="network")
        conflist = self._read_network(name)
        cni.check_plugins(self.host, conflist)
        used = set(n["ifname"] for n in record["networks"])
        index = 0
        while "eth%d" % index in used:
            index += 1
        network = {"name": name, "ifname": "eth%d" % index, "runtime": {}, "conflist": conflist}
        if ip:
            network["runtime"]["ips"] = [self._check_ip(ip, network, records)]
        _drop_idle_plugins(network)
        for alias in aliases or ():
            if check_name(alias, field="--alias", reserved=False) not in record["aliases"]:
                record["aliases"].append(alias)
        record["networks"].append(network)
        self._save(record)
        try:
            self._add_network(record, network)
        except BaseException:
            record["networks"].remove(network)
            try:
                self._del_and_sweep(record["id"], network, record["netns"])
            finally:
                self._save(record)
            raise
        records[record["id"]] = record
        self._refresh_hosts(records)
        return self._view(record)

    def disconnect(self, container_id, network):
        return self._locked(self._disconnect, container_id, network)

    def _disconnect(self, ref, name):
        records = self._records()
        record = self._find_record(ref, records)
        if name == "bridge":
            name = DEFAULT_NETWORK
        found = [n for n in record.get("networks", []) if n["name"] == name]
        if not found:
            raise NetworkError("container %s is not on network %r" % (record["name"], name),
                               field="network")
        self._del_and_sweep(record["id"], found[0], record["netns"])
        record["networks"].remove(found[0])
        record["interfaces"] = [i for i in record["interfaces"] if i["network"] != name]
        if found[0]["runtime"].get("portMappings"):
            record["ports"] = []
        self._save(record)
        records[record["id"]] = record
        self._refresh_hosts(records)
        return self._view(record)

    def container(self, ref):
        """The attachment of a container (by id, name or id prefix): mode, interfaces, ports, files."""
        def run():
            record = self._find_record(ref)
            view = self._view(record)
            view.update(id=record["id"], name=record["name"], mode=record["mode"],
                        status=record["status"], networks=[n["name"] for n in record["networks"]])
            return view
        return self._locked(run)

    def check(self, container_id):
        """CNI CHECK of every network of an attached container; raises NetworkError on drift."""
        def run():
            record = self._find_record(container_id)
            for network in record["networks"]:
                cache = read_json(self.store.cache_path(record["id"], network["name"]))
                if cache is None:
                    raise NetworkError("no cached CNI result for network %r" % network["name"])
                cni.run_check(self.host, cache["config"], record["id"], record["netns"],
                              network["ifname"], cache["runtimeConfig"], cache["result"])
        self._locked(run)

    def cleanup_stale(self, live_ids=None):
        """Undo what a killed capsa left: attachments whose owner died mid-attach (or, given
        `live_ids`, every attachment of a container not in it), then namespaces, CNI caches,
        files and IPAM leases that no record claims. Returns what was removed, as strings."""
        return self._locked(self._cleanup_stale, None if live_ids is None else set(live_ids))

    def _cleanup_stale(self, live_ids):
        removed = []
        failures = []
        for cid, record in sorted(self._records().items()):
            dead = record.get("status") != "attached" and not self.host.owner_alive(record.get("owner"))
            gone = live_ids is not None and cid not in live_ids
            if dead or gone:
                try:
                    self._teardown(cid)
                    removed.append("container " + cid)
                except CapsaError as exc:
                    failures.append(exc)
        known = set(self.store.record_ids())
        for entry in _listdir(self.store.netns):
            if entry not in known and not entry.endswith(".tmp"):
                apply_remove_netns(self.kernel, os.path.join(self.store.netns, entry))
                removed.append("netns " + entry)
        for cid in _listdir(self.store.cache):
            if cid in known:
                continue
            for entry in _listdir(os.path.join(self.store.cache, cid)):
                cache = read_json(os.path.join(self.store.cache, cid, entry))
                if entry.endswith(".json") and cache and cache.get("config"):
                    network = {"name": entry[:-len(".json")],
                               "ifname": cache["ifName"], "conflist": cache["config"],
                               "runtime": cache.get("runtimeConfig") or {}}
                    try:
                        self._del_and_sweep(cid, network, "")
                    except CapsaError as exc:
                        failures.append(exc)
            remove_tree(os.path.join(self.store.cache, cid))
            removed.append("cache " + cid)
        for cid in _listdir(self.store.files):
            if cid not in known:
                remove_tree(os.path.join(self.store.files, cid))
                removed.append("files " + cid)
        for network in _listdir(self.store.ipam):
            removed.extend("lease " + l for l in self._release_leases(None, network, keep=known))
        if failures:
            raise failures[0]
        self._refresh_hosts(self._records())
        return removed


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
