"""`capsa network …` and `capsa port` argv handling, driven through an injected manager."""
import io
import json

import pytest

from capsa.engine.network.commands import cmd_network, cmd_port
from capsa.engine.network.manager import NetworkManager
from capsa.errors import NetworkError, UsageError
from capsa.syscalls.fake import FakeKernel
from tests.unit.test_network_fakes import FakeHost


class Ctx:
    def __init__(self, manager, root):
        self.store_root = str(root)
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.isatty = False
        self.network_manager = manager


@pytest.fixture
def ctx(tmp_path):
    manager = NetworkManager(str(tmp_path / "net"), kernel=FakeKernel(), host=FakeHost(),
                             default_subnet="10.89.201.0/24")
    return Ctx(manager, tmp_path)


def run(ctx, *argv):
    ctx.stdout.seek(0)
    ctx.stdout.truncate()
    assert cmd_network(ctx, list(argv)) == 0
    return ctx.stdout.getvalue()


def test_create_ls_inspect_rm(ctx):
    assert run(ctx, "create", "--subnet", "10.89.40.0/24", "--gateway=10.89.40.254", "--internal",
               "-o", "mtu=1400", "web") == "web\n"
    assert run(ctx, "create", "--subnet=10.89.41.0/24", "--ip-range", "10.89.41.128/25", "api") == "api\n"
    table = run(ctx, "ls").splitlines()
    assert table[0].split() == ["NAME", "DRIVER", "SUBNET", "GATEWAY", "INTERNAL", "CONTAINERS"]
    assert table[2].split() == ["web", "bridge", "10.89.40.0/24", "10.89.40.254", "yes", "0"]
    assert run(ctx, "ls", "-q") == "api\nweb\n"
    shown = json.loads(run(ctx, "inspect", "web"))
    assert shown[0]["mtu"] == 1400 and shown[0]["internal"] is True
    assert json.loads(run(ctx, "ls", "--format", "json"))[0]["ip_range"] == "10.89.41.128/25"
    assert run(ctx, "rm", "web", "api") == "web\napi\n"
    assert run(ctx, "ls", "-q") == ""


def test_connect_disconnect_prune_and_port(ctx):
    run(ctx, "create", "--subnet", "10.89.42.0/24", "front")
    run(ctx, "create", "--subnet", "10.89.43.0/24", "back")
    run(ctx, "create", "--subnet", "10.89.44.0/24", "idle")
    ctx.network_manager.attach("c1abcdef", "web", "front", {"publish": ["8080:80", "5353:53/udp"]})
    run(ctx, "connect", "--alias", "api", "--ip", "10.89.43.7", "back", "web")
    assert json.loads(run(ctx, "inspect", "back"))[0]["containers"]["c1abcdef"]["ip"] == "10.89.43.7"
    run(ctx, "disconnect", "back", "c1ab")
    assert run(ctx, "prune") == "back\nidle\n"
    ctx.stdout.seek(0)
    ctx.stdout.truncate()
    assert cmd_port(ctx, ["web"]) == 0
    assert ctx.stdout.getvalue() == "80/tcp -> 0.0.0.0:8080\n53/udp -> 0.0.0.0:5353\n"
    ctx.stdout.seek(0)
    ctx.stdout.truncate()
    assert cmd_port(ctx, ["web", "53/udp"]) == 0 and ctx.stdout.getvalue() == "0.0.0.0:5353\n"
    with pytest.raises(NetworkError, match="no public port 81"):
        cmd_port(ctx, ["web", "81"])
    with pytest.raises(NetworkError, match="no attached container"):
        cmd_port(ctx, ["ghost"])


@pytest.mark.parametrize("argv,error,fragment", [
    (["frobnicate"], UsageError, "unknown network command"),
    (["create"], UsageError, "one NAME"),
    (["create", "--bogus", "x"], UsageError, "unknown flag --bogus"),
    (["create", "-o", "color=red", "x"], UsageError, "unknown -o color"),
    (["create", "--subnet", "10.89.45.3/24", "x"], NetworkError, "host bits"),
    (["create", "--mtu", "9", "x"], NetworkError, "out of range"),
    (["create", "none"], NetworkError, "reserved"),
    (["rm", "ghost"], NetworkError, "not found"),
    (["inspect"], UsageError, "needs a NAME"),
    (["connect", "onlyone"], UsageError, "NETWORK CONTAINER"),
    (["ls", "--format", "yaml"], UsageError, "unknown --format"),
])
def test_bad_command_lines(ctx, argv, error, fragment):
    with pytest.raises(error, match=fragment):
        cmd_network(ctx, argv)
    assert ctx.network_manager.list() == []


def test_help(ctx):
    assert cmd_network(ctx, ["--help"]) == 0 and "connect" in ctx.stdout.getvalue()
    assert cmd_network(ctx, []) == 2
