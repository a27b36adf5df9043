"""systemd calls of the kernel seam: transient units that own a container's cgroups.

Mirrored by capsa.syscalls.fake. Properties are JSON lists [name, D-Bus signature, value].
Imports only os and errors at load time; the D-Bus client (capsa.syscalls.dbus) lazily.
"""
from capsa.errors import KernelError, StateError

_DEST = "org.freedesktop.systemd1"
_PATH = "/org/freedesktop/systemd1"
_MANAGER = "org.freedesktop.systemd1.Manager"
_JOB_TIMEOUT = 30
_GONE = ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.DBus.Error.UnknownObject")


def _bus():
    from capsa.syscalls.dbus import system_bus
    return system_bus()


def _props(properties):
    return [(name, (signature, value)) for name, signature, value in properties]


def _manager(member, signature="", args=()):
    return _bus().call(_DEST, _PATH, _MANAGER, member, signature, args)


def _subscribe():
    """Once per connection: signals reach a private-socket peer unasked, while a bus-daemon
    peer must Subscribe and add a match (a second Subscribe there is an error)."""
    bus = _bus()
    if getattr(bus, "subscribed", False):
        return
    _manager("Subscribe")
    if bus.daemon:
        bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                 "AddMatch", "s", ("type='signal',sender='org.freedesktop.systemd1',"
                                   "member='JobRemoved'",))
    bus.subscribed = True


def _wait_job(job, unit, what):
    import time
    bus = _bus()
    bus.sock.settimeout(_JOB_TIMEOUT)
    started = time.monotonic()
    try:
        body = bus.wait_signal("JobRemoved", lambda body: body[1] == job)
    except KernelError as err:
        raise KernelError("systemd did not finish %s %s within %d s: %s"
                          % (what, unit, time.monotonic() - started, err.message), errno=err.errno)
    return body[3]


class SystemdCalls:
    """Ask systemd (PID 1) to make, change and remove transient units."""

    def systemd_start_unit(self, name, properties):
        """StartTransientUnit and wait for its job; a failed leftover of the same name is reset
        first (runc does the same), a live one is refused."""
        from capsa.syscalls.dbus import BusError
        _subscribe()
        for attempt in (1, 2):
            try:
                job = _manager("StartTransientUnit", "ssa(sv)a(sa(sv))",
                               (name, "replace", _props(properties), []))[0]
                break
            except BusError as err:
                if err.name != "org.freedesktop.systemd1.UnitExists" or attempt == 2:
                    raise KernelError("systemd refused to start %s: %s" % (name, err.text),
                                      errno=err.errno, field="linux.cgroupsPath")
                try:
                    _manager("ResetFailedUnit", "s", (name,))
                except BusError:
                    raise StateError("systemd unit %s exists already and is in use" % name,
                                     field="linux.cgroupsPath",
                                     hint="pick another container id or cgroupsPath")
        result = _wait_job(job, name, "starting")
        if result != "done":
            raise KernelError("systemd could not start %s: job %s" % (name, result),
                              field="linux.cgroupsPath",
                              hint="see `systemctl status %s` and the journal" % name)

    def systemd_stop_unit(self, name):
        """StopUnit and wait for its job; a unit that is already gone is fine."""
        from capsa.syscalls.dbus import BusError
        _subscribe()
        try:
            job = _manager("StopUnit", "ss", (name, "replace"))[0]
        except BusError as err:
            if err.name in _GONE:
                return
            raise KernelError("systemd refused to stop %s: %s" % (name, err.text))
        _wait_job(job, name, "stopping")
        try:
            _manager("ResetFailedUnit", "s", (name,))
        except BusError:
            pass  # not failed, or already collected

    def systemd_set_unit_properties(self, name, properties):
        """SetUnitProperties (runtime only, as runc does: gone at reboot like the unit)."""
        from capsa.syscalls.dbus import BusError
        try:
            _manager("SetUnitProperties", "sba(sv)", (name, True, _props(properties)))
        except BusError as err:
            raise KernelError("systemd refused new limits for %s: %s" % (name, err.text),
                              field="resources")


def read_systemd_version():
    """systemd's major version (252 for "252.38-1~deb12u1"), or 0 if it cannot be read."""
    try:
        text = _bus().call(_DEST, _PATH, "org.freedesktop.DBus.Properties", "Get", "ss",
                           (_MANAGER, "Version"))[0]
    except KernelError:
        return 0
    digits = ""
    for char in str(text).lstrip("v"):
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits else 0
