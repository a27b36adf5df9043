"""Fixtures shared by the integration and conformance tiers: a booted systemd test machine
(tests/systemd_machine.py).

Owns no test; defines fixtures only. Must not import capsa, so collecting it costs nothing.
"""
import os

import pytest

from tests.systemd_machine import SystemdMachine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def systemd_machine(tmp_path_factory):
    """A machine with systemd as PID 1, booted once per module; `.binds[0]` is a tmp folder
    seen at the same path inside (put bundles and --root state there). Shut down, cgroups and
    all, at the module's end, also when a test failed."""
    reason = SystemdMachine.missing()
    if reason:
        pytest.skip(reason)
    shared = tmp_path_factory.mktemp("sdshared")
    # the checkout too: the installed launchers import capsa from it, and a clone under /tmp
    # (as CI makes) would be hidden by the machine's own /tmp
    machine = SystemdMachine(tmp_path_factory.mktemp("sdmachine"), binds=(str(shared), REPO))
    machine.boot()
    try:
        yield machine
    finally:
        machine.shutdown()
