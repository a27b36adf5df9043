"""HostSystem's host reads and probes that need no root: plugin lookup, routes, ports, pids."""
import os
import socket

import pytest

from capsa.engine.network.host import HostSystem, read_start_time
from capsa.errors import NetworkError


def test_find_plugin_walks_the_dirs_in_order(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for folder in (first, second):
        plugin = folder / "bridge"
        plugin.write_text("#!/bin/sh\n")
        plugin.chmod(0o755)
    (first / "portmap").write_text("not executable")
    host = HostSystem([str(first), str(second)])
    assert host.find_plugin("bridge") == str(first / "bridge")
    with pytest.raises(NetworkError, match="'portmap' not found in %s:%s" % (first, second)) as err:
        host.find_plugin("portmap")
    assert "containernetworking-plugins" in err.value.line()
    with pytest.raises(NetworkError, match="bad CNI plugin type"):
        host.find_plugin("../bridge")


def test_cni_path_environment_is_honoured(monkeypatch):
    monkeypatch.setenv("CNI_PATH", "/x:/y")
    assert HostSystem().plugin_dirs == ["/x", "/y"]


def test_run_plugin_passes_stdin_env_and_exit_status(tmp_path):
    plugin = tmp_path / "echo"
    plugin.write_text("#!/bin/sh\necho \"$CNI_COMMAND\"; cat; exit 3\n")
    plugin.chmod(0o755)
    rc, out, err = HostSystem([str(tmp_path)]).run_plugin(str(plugin), {"CNI_COMMAND": "ADD"}, b"{}")
    assert (rc, out) == (3, b"ADD\n{}")
    rc, out, err = HostSystem().run_plugin(str(tmp_path / "missing"), {}, b"")
    assert rc == 126 and err


def test_read_routes_parses_proc_net_route():
    routes = HostSystem().read_routes()
    with open("/proc/net/route") as handle:
        assert len(routes) == len(handle.readlines()) - 1
    for subnet, dev in routes:
        address, _, prefix = subnet.partition("/")
        assert len(address.split(".")) == 4 and 0 <= int(prefix) <= 32 and dev


def test_port_probe_sees_a_listener_and_pick_port_finds_a_free_one():
    host = HostSystem()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        assert host.port_taken("127.0.0.1", port, "tcp")
    finally:
        listener.close()
    assert not host.port_taken("127.0.0.1", port, "tcp")
    free = host.pick_port("127.0.0.1", "udp")
    assert 0 < free < 65536 and not host.port_taken("127.0.0.1", free, "udp")


def test_owner_is_alive_while_it_runs_and_not_after_pid_reuse():
    host = HostSystem()
    me = host.owner()
    assert me[0] == os.getpid() and host.owner_alive(me)
    assert not host.owner_alive((me[0], me[1] + 1))
    assert not host.owner_alive(None) and read_start_time(2 ** 22 + 7) is None
