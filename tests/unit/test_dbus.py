"""capsa.syscalls.dbus: the D-Bus wire format checked against jeepney (an independent pure-Python
implementation), and the client's call/error/signal handling against a peer on a socketpair."""
import _socket
import threading

import pytest
from jeepney import DBusAddress, new_method_call
from jeepney.low_level import Parser

from capsa.errors import KernelError
from capsa.syscalls import dbus

SYSTEMD = ("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
           "org.freedesktop.systemd1.Manager")
START_SIG = "ssa(sv)a(sa(sv))"
START_ARGS = ("capsa-c1.scope", "replace",
              [("Description", ("s", "capsa container c1")), ("Delegate", ("b", True)),
               ("MemoryLimit", ("t", 67108864)), ("PIDs", ("au", [4242, 7])),
               ("DeviceAllow", ("a(ss)", [("char-pts", "rwm"), ("/dev/char/1:3", "rwm")])),
               ("AllowedCPUs", ("ay", [0x17])), ("CPUQuotaPerSecUSec", ("t", (1 << 64) - 1))],
              [])


def _plain(value):
    """jeepney reads "ay" as bytes; capsa reads and writes it as a list of ints."""
    if isinstance(value, bytes):
        return list(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def _jeepney_parse(data):
    parser = Parser()
    parser.add_data(data)
    message = parser.get_next_message()
    assert message is not None, "jeepney could not parse the bytes"
    return message


def _capsa_call_bytes(serial, signature, args, destination=True):
    fields = {1: SYSTEMD[1], 2: SYSTEMD[2], 3: "StartTransientUnit"}
    if destination:
        fields[6] = SYSTEMD[0]
    return dbus.build_message(dbus.METHOD_CALL, serial, fields, signature, args)


def test_method_call_is_byte_for_byte_what_jeepney_writes():
    theirs = new_method_call(DBusAddress(SYSTEMD[1], SYSTEMD[0], SYSTEMD[2]),
                             "StartTransientUnit", START_SIG, START_ARGS).serialise(serial=3)
    assert _capsa_call_bytes(3, START_SIG, START_ARGS) == theirs


def test_jeepney_reads_back_every_value_capsa_writes():
    message = _jeepney_parse(_capsa_call_bytes(9, START_SIG, START_ARGS))
    assert _plain(message.body) == START_ARGS
    assert message.header.serial == 9


def test_capsa_reads_what_jeepney_writes():
    data = new_method_call(DBusAddress(SYSTEMD[1], SYSTEMD[0], SYSTEMD[2]),
                           "StartTransientUnit", START_SIG, START_ARGS).serialise(serial=4)
    assert dbus.read_message_size(data[:16]) == len(data)
    kind, fields, body = dbus.parse_message(data)
    assert kind == dbus.METHOD_CALL
    assert fields[3] == "StartTransientUnit" and fields[8] == START_SIG
    name, mode, props, aux = body
    assert (name, mode, aux) == ("capsa-c1.scope", "replace", [])
    # variants come back as their value alone
    assert dict(props)["PIDs"] == [4242, 7]
    assert dict(props)["DeviceAllow"] == [("char-pts", "rwm"), ("/dev/char/1:3", "rwm")]
    assert dict(props)["Delegate"] is True


@pytest.mark.parametrize("signature,args", [
    ("a(sv)", ([],)),                       # empty array of 8-aligned structs: still padded
    ("ya{sv}", (7, {"a": ("u", 1), "b": ("as", ["x", "y"])})),
    ("nqixtd", (-2, 65535, -7, -(1 << 40), (1 << 64) - 1, 0.5)),
    ("gov", ("a{sv}", "/o/p", ("(ub)", (3, False)))),
    ("aay", ([[1, 2, 3], []],)),
])
def test_round_trip_through_both_implementations(signature, args):
    data = dbus.build_message(dbus.SIGNAL, 1, {1: "/x", 2: "a.b", 3: "C"}, signature, args)
    assert _plain(_jeepney_parse(data).body) == tuple(args)
    theirs = _jeepney_parse(data)
    assert theirs.header.message_type.value == dbus.SIGNAL


def test_signature_splitting():
    assert dbus.split_signature(START_SIG) == ["s", "s", "a(sv)", "a(sa(sv))"]
    assert dbus.split_signature("a{s(ii)}v") == ["a{s(ii)}", "v"]
    with pytest.raises(ValueError):
        dbus.split_signature("z")


class _Peer:
    """A bus peer on a socketpair: answers AUTH, then each call with `answer(member, body)`."""

    def __init__(self, answer):
        self.ours, self.theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.answer = answer
        self.received = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        sock = self.theirs
        line = b""
        while not line.endswith(b"\r\n"):
            line += sock.recv(1)
        self.received.append(line)
        sock.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
        begin = b""
        while not begin.endswith(b"\r\n"):
            begin += sock.recv(1)
        buffer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
            while len(buffer) >= 16 and len(buffer) >= dbus.read_message_size(buffer[:16]):
                size = dbus.read_message_size(buffer[:16])
                data, buffer = buffer[:size], buffer[size:]
                message = _jeepney_parse(data)
                member = message.header.fields[3]
                self.received.append((member, _plain(message.body)))
                for reply in self.answer(member, message.body, message.header.serial):
                    sock.sendall(reply)


def _reply(serial, signature="", args=()):
    return dbus.build_message(dbus.METHOD_RETURN, 100 + serial, {5: serial}, signature, args)


def _error(serial, name, text):
    return dbus.build_message(dbus.ERROR, 100 + serial, {4: name, 5: serial}, "s", (text,))


def _signal(member, signature, args):
    return dbus.build_message(dbus.SIGNAL, 99, {1: SYSTEMD[1], 2: SYSTEMD[2], 3: member},
                              signature, args)


def _bus_over(peer, monkeypatch):
    class Socket:
        def __init__(self, *args):
            self.inner = peer.ours

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def connect(self, path):
            self.path = path

    monkeypatch.setattr(dbus._socket, "socket", Socket)
    return dbus.Bus("/run/systemd/private", False)


def test_call_authenticates_and_returns_the_reply(monkeypatch):
    def answer(member, body, serial):
        yield _reply(serial, "o", ("/org/freedesktop/systemd1/job/7",))
    peer = _Peer(answer)
    bus = _bus_over(peer, monkeypatch)
    assert bus.call(*SYSTEMD, "StartTransientUnit", START_SIG, START_ARGS) == \
        ["/org/freedesktop/systemd1/job/7"]
    assert peer.received[0].startswith(b"\0AUTH EXTERNAL ")
    assert peer.received[1] == ("StartTransientUnit", START_ARGS)


def test_error_reply_raises_bus_error_with_its_name(monkeypatch):
    def answer(member, body, serial):
        yield _error(serial, "org.freedesktop.systemd1.NoSuchUnit", "Unit x.scope not loaded.")
    bus = _bus_over(_Peer(answer), monkeypatch)
    with pytest.raises(dbus.BusError) as caught:
        bus.call(*SYSTEMD, "StopUnit", "ss", ("x.scope", "replace"))
    assert caught.value.name == "org.freedesktop.systemd1.NoSuchUnit"
    assert isinstance(caught.value, KernelError)
    assert "not loaded" in caught.value.line()


def test_signals_before_the_reply_are_kept_for_wait_signal(monkeypatch):
    job = "/org/freedesktop/systemd1/job/9"

    def answer(member, body, serial):
        # systemd may emit the job's end before the caller reads the reply
        yield _signal("JobRemoved", "uoss", (8, "/other/job", "y.scope", "done"))
        yield _signal("JobRemoved", "uoss", (9, job, "x.scope", "failed"))
        yield _reply(serial, "o", (job,))
    bus = _bus_over(_Peer(answer), monkeypatch)
    assert bus.call(*SYSTEMD, "StartTransientUnit", START_SIG, START_ARGS) == [job]
    assert bus.wait_signal("JobRemoved", lambda body: body[1] == job) == [9, job, "x.scope",
                                                                           "failed"]
    assert [body[1] for _, body in bus.signals] == ["/other/job"]


def test_a_peer_that_hangs_up_is_a_clear_error(monkeypatch):
    peer = _Peer(lambda member, body, serial: iter(()))
    bus = _bus_over(peer, monkeypatch)
    peer.theirs.shutdown(_socket.SHUT_RDWR)
    with pytest.raises(KernelError) as caught:
        bus.call(*SYSTEMD, "Subscribe")
    assert "systemd" in caught.value.line()
