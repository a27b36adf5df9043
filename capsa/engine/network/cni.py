"""The CNI 1.0 exec protocol: one plugin chain of a conflist run for ADD, CHECK or DEL.

Owns the plugin's stdin (network config + runtimeConfig + prevResult), its environment, and the
parsing of its answer. Plugins run through `host.run_plugin`, so tests drive it with a fake host.
Must not import capsa.syscalls; reads and writes no files itself.
"""
from capsa.errors import NetworkError
from capsa.jsonlite import dumps, loads


def build_plugin_config(conflist, plugin, runtime_config=None, prev_result=None):
    """What one plugin reads on stdin: its own object plus the chain's name and cniVersion."""
    conf = dict(plugin)
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist["cniVersion"]
    caps = plugin.get("capabilities") or {}
    # Only capabilities the plugin declares reach it (CNI spec, "Deriving runtimeConfig").
    given = dict((k, v) for k, v in (runtime_config or {}).items() if caps.get(k) and v)
    if given:
        conf["runtimeConfig"] = given
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


def build_env(command, container_id, netns, ifname, plugin_dirs, args=None):
    """The CNI_* variables; PATH is kept because plugins run iptables and ip."""
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns or "",
            "CNI_IFNAME": ifname, "CNI_PATH": ":".join(plugin_dirs),
            "CNI_ARGS": ";".join("%s=%s" % kv for kv in sorted((args or {}).items())),
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def check_plugins(host, conflist):
    """Fail before doing anything if a plugin of the chain is not installed."""
    return [host.find_plugin(plugin["type"]) for plugin in conflist["plugins"]]


def _run(host, path, command, conf, env, network):
    rc, out, err = host.run_plugin(path, env, dumps(conf).encode())
    return _answer(rc, out, err, path, command, conf, network)


def _answer(rc, out, err, path, command, conf, network):
    if rc == 0:
        if command != "ADD":
            return None
        try:
            return loads(out or b"{}")
        except ValueError:
            raise NetworkError("CNI plugin %s (%s) printed no JSON result" % (conf["type"], path),
                               field="network " + network)
    message = ""
    try:
        answer = loads(out)
        message = answer.get("msg", "")
        if answer.get("details"):
            message += ": " + answer["details"]
    except (ValueError, AttributeError):
        pass
    if not message:
        message = (err or out or b"").decode(errors="replace").strip().splitlines()
        message = message[-1] if message else "exit status %d" % rc
    raise NetworkError("CNI plugin %s %s failed: %s" % (conf["type"], command, message),
                       field="network " + network)


def run_add(host, conflist, container_id, netns, ifname, runtime_config=None, save=None,
            skip=(), prev=None):
    """ADD through the chain; `save(result)` after every plugin, so a crash leaves DEL enough to
    undo. Plugins whose type is in `skip` are left out; `prev` is the first plugin's prevResult."""
    paths = check_plugins(host, conflist)
    env = build_env("ADD", container_id, netns, ifname, host.plugin_dirs)
    result = prev
    for path, plugin in zip(paths, conflist["plugins"]):
        if plugin["type"] in skip:
            continue
        conf = build_plugin_config(conflist, plugin, runtime_config, result)
        result = _run(host, path, "ADD", conf, env, conflist["name"])
        if save is not None:
            save(result)
    return result


def start_add(host, conflist, container_id, netns, ifname):
    """Start the ADD of a one-plugin chain (loopback); the returned function waits for it and
    returns its result, raising NetworkError as run_add does."""
    (path,) = check_plugins(host, conflist)
    conf = build_plugin_config(conflist, conflist["plugins"][0])
    env = build_env("ADD", container_id, netns, ifname, host.plugin_dirs)
    wait = host.start_plugin(path, env, dumps(conf).encode())
    return lambda: _answer(*(wait() + (path, "ADD", conf, conflist["name"])))


def run_check(host, conflist, container_id, netns, ifname, runtime_config, result):
    paths = check_plugins(host, conflist)
    env = build_env("CHECK", container_id, netns, ifname, host.plugin_dirs)
    has_v6 = any(":" in entry.get("address", "") for entry in (result or {}).get("ips") or [])
    for path, plugin in zip(paths, conflist["plugins"]):
        if plugin["type"] == "portmap" and not has_v6:
            # portmap <= 1.2 CHECKs ip6tables chains it never made for IPv4-only results:
            # containernetworking/plugins#819.
            continue
        conf = build_plugin_config(conflist, plugin, runtime_config, result)
        _run(host, path, "CHECK", conf, env, conflist["name"])


def run_del(host, conflist, container_id, netns, ifname, runtime_config=None, result=None, skip=()):
    """DEL in reverse order with the cached result; every plugin runs, the first error is raised."""
    env = build_env("DEL", container_id, netns, ifname, host.plugin_dirs)
    first = None
    for plugin in reversed(conflist["plugins"]):
        if plugin["type"] in skip:
            continue
        try:
            path = host.find_plugin(plugin["type"])
            conf = build_plugin_config(conflist, plugin, runtime_config, result)
            _run(host, path, "DEL", conf, env, conflist["name"])
        except NetworkError as exc:
            first = first or exc
    if first is not None:
        raise first


def read_interface(result, ifname):
    """(ip, prefix, gateway, mac) of `ifname` in a CNI result; None parts when absent."""
    interfaces = result.get("interfaces") or []
    mac = None
    index = None
    for i, iface in enumerate(interfaces):
        if iface.get("name") == ifname and iface.get("sandbox"):
            mac, index = iface.get("mac"), i
    for entry in result.get("ips") or []:
        if index is None or entry.get("interface") == index:
            address, _, prefix = entry.get("address", "").partition("/")
            if ":" in address:
                continue
            return address, int(prefix or 32), entry.get("gateway"), mac
    return None, None, None, mac
