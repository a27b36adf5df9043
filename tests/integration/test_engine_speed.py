"""The fast `capsa run --rm` path on a real kernel: the overlay of a `--rm` container is mounted
volatile (its upper layer is deleted with it, so unmounting it syncs nothing), a kept container's
is not, and either leaves nothing behind. Needs root."""
import os

import pytest

from tests.integration.test_engine_support import make_fixtures

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, namespaces)")

base_rootfs, rootfs, eng = make_fixtures()


def _root_options(output):
    """(fstype, mount options) of / from the container's /proc/mounts."""
    lines = [line.split() for line in output.splitlines() if line.split()[1:2] == ["/"]]
    assert lines, output
    return lines[-1][2], set(lines[-1][3].split(","))


def test_rm_overlay_skips_syncs_and_a_kept_one_does_not(eng):
    # Linux 6.x shows the option as fsync=volatile, older kernels as volatile
    fstype, options = _root_options(eng.out("run", "--rm", "busybox", "cat", "/proc/mounts"))
    assert fstype == "overlay" and options & {"volatile", "fsync=volatile"}
    fstype, options = _root_options(eng.out("run", "--name", "kept", "busybox", "cat",
                                            "/proc/mounts"))
    assert fstype == "overlay" and not options & {"volatile", "fsync=volatile"}
    eng.out("rm", "kept")
    assert os.listdir(os.path.join(eng.root, "containers")) == []
    assert os.listdir(os.path.join(eng.root, "images", "attachments")) == []
