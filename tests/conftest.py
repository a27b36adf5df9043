"""Fixtures shared by the integration and conformance tiers: a booted systemd test machine
(tests/systemd_machine.py).

Owns no test; defines fixtures only. Must not import capsa, so collecting it costs nothing.
"""
import pytest

from tests.systemd_machine import SystemdMachine


@pytest.fixture(scope="module")
def systemd_machine(tmp_path_factory):
    """A machine with systemd as PID 1, booted once per module; `.binds[0]` is a tmp folder
    seen at the same path inside (put bundles and --root state there). Shut down, cgroups and
    all, at the module's end, also when a test failed."""
    reason = SystemdMachine.missing()
    if reason:
        pytest.skip(reason)
    shared = tmp_path_factory.mktemp("sdshared")
    machine = SystemdMachine(tmp_path_factory.mktemp("sdmachine"), binds=(str(shared),))
    machine.boot()
    try:
        yield machine
    finally:
        machine.shutdown()
