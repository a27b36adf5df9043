"""The parent<->child sync channel: one SOCK_SEQPACKET socketpair, one message per packet.

A message is `kind` plus an optional JSON payload plus optional fds (SCM_RIGHTS); errors in the
child travel back as data ("error" with the CapsaError line), never as exit codes. Uses the
`_socket` builtin, not `socket` (whose import costs ~9 ms through enum and selectors).
The protocol itself is drawn in docs/ARCHITECTURE.md and at the top of capsa.runtime.launch.
"""
import _socket
from capsa import jsonlite as json
import struct

from capsa.errors import ContainerError

AF_UNIX = _socket.AF_UNIX
SCM_RIGHTS = _socket.SCM_RIGHTS
SOL_SOCKET = _socket.SOL_SOCKET
_MAX = 1 << 16


def make_pair():
    """Two connected sockets (parent end, child end); both close on exec."""
    return _socket.socketpair(AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)


def send(sock, kind, payload=None, fds=()):
    data = kind.encode()
    if payload is not None:
        data += b"\0" + json.dumps(payload).encode()
    ancillary = []
    if fds:
        ancillary = [(SOL_SOCKET, SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))]
    sock.sendmsg([data], ancillary)


def receive(sock):
    """-> (kind, payload, fds). An empty read means the peer died before saying anything."""
    try:
        data, ancillary, _, _ = sock.recvmsg(_MAX, _socket.CMSG_SPACE(16 * 4))
    except ConnectionResetError:  # the peer was killed (e.g. by the OOM killer) mid-message
        return "eof", None, []
    fds = []
    for level, kind, blob in ancillary:
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            usable = len(blob) - len(blob) % 4
            fds.extend(struct.unpack("%di" % (usable // 4), blob[:usable]))
    if not data:
        return "eof", None, fds
    kind, _, rest = data.partition(b"\0")
    return kind.decode(), (json.loads(rest) if rest else None), fds


def expect(sock, wanted):
    """Receive one message and insist on its kind; a child's error becomes ContainerError."""
    kind, payload, fds = receive(sock)
    if kind == wanted:
        return payload, fds
    if kind == "error":
        raise ContainerError(payload.get("message", "container setup failed"),
                             field=payload.get("field"), hint=payload.get("hint"))
    if kind == "eof":
        raise ContainerError("the container's process died during setup (waiting for %s)" % wanted,
                             hint="a memory or pids limit too small for start-up shows so")
    raise ContainerError("protocol error: got %r while waiting for %r" % (kind, wanted))


def send_fd_to_path(path, fd, payload=None):
    """Connect to a unix socket path (console socket, seccomp listener) and send one fd."""
    sock = _socket.socket(AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
        data = b"\0" if payload is None else payload
        sock.sendmsg([data], [(SOL_SOCKET, SCM_RIGHTS, struct.pack("i", fd))])
    finally:
        sock.close()
