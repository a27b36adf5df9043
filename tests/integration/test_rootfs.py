"""Integration tests of the rootfs plan on the real kernel: a forked child unshares its mount
namespace, applies the plan on a busybox rootfs in a tmpdir, and busybox reports what it sees."""
import json
import os
import subprocess

import pytest

from capsa.errors import CapsaError
from capsa.runtime.apply.rootfs import (apply_console, apply_idmapped_sources, apply_mounts,
                                        apply_pivot)
from capsa.runtime.mounts import build_rootfs_plan
from capsa.runtime.specgen import build_default_spec
from capsa.syscalls.kernel import Kernel
from capsa.syscalls.proc import CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER

BUSYBOX = "/bin/busybox"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for mount namespaces"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="needs busybox-static at /bin/busybox"),
]


def default_mounts():
    return build_default_spec(terminal=False)["mounts"]


def make_spec(mounts=None, rootless=False):
    """runc's default spec (capsa.runtime.specgen) with a writable root unless a test says so."""
    spec = build_default_spec(terminal=False, rootless=rootless)
    spec["root"]["readonly"] = False
    if mounts is not None:
        spec["mounts"] = mounts
    return spec


@pytest.fixture(scope="session")
def applets():
    out = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout
    return out.split()


@pytest.fixture
def bundle(tmp_path, applets):
    """A busybox rootfs under tmp_path/rootfs, applets as symlinks as `busybox --install -s`."""
    rootfs = tmp_path / "rootfs"
    for name, mode in (("bin", 0o755), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755),
                       ("tmp", 0o1777), ("etc", 0o755), ("root", 0o700)):
        (rootfs / name).mkdir(parents=True)
        os.chmod(rootfs / name, mode)
    with open(BUSYBOX, "rb") as src, open(rootfs / "bin" / "busybox", "wb") as dst:
        dst.write(src.read())
    os.chmod(rootfs / "bin" / "busybox", 0o755)
    for name in applets:
        if name != "busybox":
            os.symlink("busybox", rootfs / "bin" / name)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return tmp_path


@pytest.fixture(autouse=True)
def host_mounts_unchanged(tmp_path):
    # Other engineers' tests mount things meanwhile: compare what concerns this test's folder
    # and the host's root.
    before = _mount_table(str(tmp_path))
    yield
    assert _mount_table(str(tmp_path)) == before


def _mount_table(folder):
    with open("/proc/self/mountinfo") as handle:
        fields = [line.split() for line in handle]
    return sorted(" ".join(f[2:]) for f in fields if f[4] == "/" or folder in f[3] or folder in f[4])


def host_facts(**extra):
    facts = {"userns": False, "no_pivot": False, "terminal": False,
             "cgroup_layout": {"mode": "v2", "v1": {}, "v2": None}, "cgroup_paths": {}}
    facts.update(extra)
    return facts


def run_in_container(bundle_dir, spec, script, facts=None, flags=CLONE_NEWNS, before_pivot=None,
                     id_map="0 0 1\n", kernel_class=Kernel, after_pivot=None):
    """(exit status, combined output) of `sh -c script` inside the container; with
    CLONE_NEWUSER the test process writes `id_map` as the child's uid and gid maps."""
    facts = facts or host_facts()
    plan = json.loads(json.dumps(build_rootfs_plan(spec, str(bundle_dir), facts)))
    read_end, write_end = os.pipe()
    mapped_r, mapped_w = os.pipe()
    unshared_r, unshared_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        status = 120
        try:
            os.close(read_end)
            os.close(unshared_r)
            os.close(mapped_w)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            kernel = kernel_class()
            prepared = apply_idmapped_sources(kernel, plan) if flags & CLONE_NEWUSER else None
            if flags & CLONE_NEWUSER:
                kernel.unshare(CLONE_NEWUSER)
                os.write(unshared_w, b"u")
                os.read(mapped_r, 1)
            kernel.unshare(flags & ~CLONE_NEWUSER)
            if flags & CLONE_NEWPID and os.fork():
                status = os.waitstatus_to_exitcode(os.wait()[1])
                os._exit(status)
            apply_mounts(kernel, plan, prepared)
            if before_pivot:
                before_pivot(kernel, plan)
            apply_pivot(kernel, plan)
            if after_pivot:
                after_pivot(kernel)
            os.execve("/bin/busybox", ["sh", "-c", script], {"PATH": "/bin"})
        except CapsaError as err:
            os.write(2, ("SETUP: " + err.line() + "\n").encode())
            status = 121
        except BaseException as err:
            os.write(2, ("SETUP-BUG: %r\n" % (err,)).encode())
        os._exit(status)
    os.close(unshared_w)
    os.close(mapped_r)
    if flags & CLONE_NEWUSER and os.read(unshared_r, 1) == b"u":
        for name in ("uid_map", "gid_map"):
            with open("/proc/%d/%s" % (pid, name), "w") as handle:
                handle.write(id_map)
    os.close(unshared_r)
    os.close(mapped_w)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def mount_line(output, target):
    """The mountinfo line of what is visible at `target`: the last one mounted there."""
    found = None
    for line in output.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == target:
            found = line
    return found


def test_default_mounts_devices_and_links(bundle):
    script = ("cat /proc/self/mountinfo; echo ==; ls -l /dev; echo ==; "
              "for l in ptmx fd stdin stdout stderr; do readlink /dev/$l; done; "
              "echo hi > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c; "
              "test -d /dev/shm && echo shm-ok; test -d /dev/pts && echo pts-ok")
    code, out = run_in_container(bundle, make_spec(), script)
    assert code == 0, out
    proc = mount_line(out, "/proc")
    assert proc and " - proc " in proc
    sys_line = mount_line(out, "/sys")
    assert sys_line and " - sysfs " in sys_line and " ro," in sys_line
    dev = mount_line(out, "/dev")
    assert "strictatime" not in dev.split()[5] and "nosuid" in dev.split()[5]
    assert "size=65536k" in dev and "mode=755" in dev
    assert "ptmxmode=666" in mount_line(out, "/dev/pts")
    shm = mount_line(out, "/dev/shm").split()[5]
    assert "nodev" in shm and "noexec" in shm
    assert " - mqueue " in mount_line(out, "/dev/mqueue")
    listing = out.split("==")[1]
    for name, numbers in (("null", "1,   3"), ("zero", "1,   5"), ("full", "1,   7"),
                          ("random", "1,   8"), ("urandom", "1,   9"), ("tty", "5,   0")):
        line = [entry for entry in listing.splitlines() if entry.endswith(" " + name)]
        assert line and line[0].startswith("crw-rw-rw-") and numbers in line[0], listing
    assert "pts/ptmx\n/proc/self/fd\n/proc/self/fd/0\n/proc/self/fd/1\n/proc/self/fd/2\n" in out
    assert "null-ok" in out and "\n4\n" in out and "shm-ok" in out and "pts-ok" in out
    # The old root is gone: no host mount point is left in the container's table.
    assert mount_line(out, "/work") is None and mount_line(out, "/sys/fs/cgroup/memory") is None
    assert " - cgroup2 " in mount_line(out, "/sys/fs/cgroup")


def test_masked_and_readonly_paths(bundle):
    script = ("wc -c < /proc/timer_list; ls /proc/acpi | wc -l; ls /sys/firmware | wc -l; "
              "echo 1 > /proc/sys/kernel/ns_last_pid && echo WROTE || echo refused; "
              "touch /sys/firmware/x && echo WROTE2 || echo refused2; cat /proc/self/mountinfo")
    code, out = run_in_container(bundle, make_spec(), script)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[:3] == ["0", "0", "0"], out
    assert "refused" in lines and "refused2" in lines and "WROTE" not in out
    assert " ro," in mount_line(out, "/proc/sys") + " "
    assert " - tmpfs " in mount_line(out, "/sys/firmware")


def test_root_readonly_and_bind_options(bundle, tmp_path):
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    (shared / "file").write_text("data\n")
    spec = make_spec(mounts=default_mounts() + [
        {"destination": "/data", "type": "bind", "source": str(shared),
         "options": ["rbind", "ro", "nosuid", "nodev", "rprivate", "rnoexec", "noatime"]},
        {"destination": "/etc/one-file", "source": str(shared / "file"), "options": ["bind", "ro"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["noexec"]},
    ])
    spec["root"]["readonly"] = True
    script = ("cat /etc/one-file; touch /newfile && echo ROOTRW || echo root-ro; "
              "touch /data/x && echo DATARW || echo data-ro; touch /scratch/x && echo scratch-rw; "
              "cat /proc/self/mountinfo")
    code, out = run_in_container(bundle, spec, script)
    assert code == 0, out
    assert "data\n" in out and "root-ro" in out and "data-ro" in out and "scratch-rw" in out
    data = mount_line(out, "/data").split()[5]
    assert data.split(",") == ["ro", "nosuid", "nodev", "noexec", "noatime"]
    assert mount_line(out, "/etc/one-file").split()[5].startswith("ro")
    assert "noexec" in mount_line(out, "/scratch").split()[5]
    assert mount_line(out, "/").split()[5].startswith("ro")


def test_no_pivot(bundle):
    code, out = run_in_container(bundle, make_spec(), "ls /bin/busybox; cat /proc/self/mountinfo",
                                 facts=host_facts(no_pivot=True))
    assert code == 0, out
    assert "/bin/busybox" in out and mount_line(out, "/proc")


def hybrid_facts(**extra):
    """This host's hybrid layout, the container's cgroups standing in for the roots."""
    base = "/sys/fs/cgroup"
    return host_facts(cgroup_layout={"mode": "hybrid", "v1": {
        "memory": base + "/memory", "pids": base + "/pids", "name=systemd": base + "/systemd"},
        "v2": base + "/unified"}, cgroup_paths={"memory": base + "/memory",
                                                "pids": base + "/pids", "unified": base + "/unified"},
        **extra)


def test_cgroup_v1_layout_read_only(bundle, tmp_path):
    facts = hybrid_facts()
    script = ("ls /sys/fs/cgroup; test -f /sys/fs/cgroup/memory/memory.limit_in_bytes && echo mem-ok; "
              "mkdir /sys/fs/cgroup/memory/x && echo MKDIR || echo mkdir-refused; "
              "mkdir /sys/fs/cgroup/y && echo MKDIR2 || echo mkdir2-refused; cat /proc/self/mountinfo")
    code, out = run_in_container(bundle, make_spec(), script, facts=facts)
    assert code == 0, out
    assert out.split("\n")[:3] == ["memory", "pids", "unified"], out
    assert "mem-ok" in out and "mkdir-refused" in out and "mkdir2-refused" in out
    assert mount_line(out, "/sys/fs/cgroup").split()[5].startswith("ro")
    assert mount_line(out, "/sys/fs/cgroup/memory").split()[5].startswith("ro")
    assert mount_line(out, "/sys/fs/cgroup/systemd") is None


def test_symlinked_destination_stays_inside(bundle, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    # The image points a mount destination at the host: it must land inside the rootfs.
    os.symlink(str(outside), bundle / "rootfs" / "escape")
    os.symlink("../../../../../../" + str(outside).lstrip("/"), bundle / "rootfs" / "escape2")
    spec = make_spec(mounts=default_mounts() + [
        {"destination": "/escape/sub", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/escape2/sub2", "type": "tmpfs", "source": "tmpfs"}])
    code, out = run_in_container(bundle, spec, "cat /proc/self/mountinfo")
    assert code == 0, out
    assert not (outside / "sub").exists() and not (outside / "sub2").exists()
    inside = bundle / "rootfs" / str(outside).lstrip("/")
    assert (inside / "sub").is_dir() and (inside / "sub2").is_dir()
    assert mount_line(out, str(outside) + "/sub")


def test_proc_on_symlink_refused(bundle, tmp_path):
    os.rmdir(bundle / "rootfs" / "proc")
    os.symlink("/tmp", bundle / "rootfs" / "proc")
    code, out = run_in_container(bundle, make_spec(), "echo RAN")
    assert code == 121 and "RAN" not in out
    assert "mounts[0].destination: /proc must be a real directory" in out


def test_dev_symlink_in_image(bundle):
    os.rmdir(bundle / "rootfs" / "dev")
    os.symlink("/run/dev", bundle / "rootfs" / "dev")
    code, out = run_in_container(bundle, make_spec(), "ls /run/dev; echo x > /dev/null && echo ok")
    assert code == 0, out
    assert "null" in out.split() and "ok" in out.split()


def test_swapped_dev_null_refused_for_masking(bundle):
    def swap(kernel, plan):
        os.unlink(plan["rootfs"] + "/dev/null")
        os.symlink("/proc/sys/kernel/core_pattern", plan["rootfs"] + "/dev/null")

    code, out = run_in_container(bundle, make_spec(), "echo RAN", before_pivot=swap)
    assert code == 121 and "RAN" not in out
    assert "not the null device" in out


def test_user_namespace_binds_devices(bundle):
    spec = make_spec(rootless=True)
    script = ("echo x > /dev/null && echo null-ok; head -c 3 /dev/urandom | wc -c; "
              "cat /proc/self/mountinfo")
    code, out = run_in_container(bundle, spec, script, facts=hybrid_facts(userns=True),
                                 flags=CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC)
    assert code == 0, out
    assert "null-ok" in out and "\n3\n" in out
    assert mount_line(out, "/dev/null") and mount_line(out, "/dev/urandom")
    assert mount_line(out, "/sys/fs/cgroup/memory").split()[5].startswith("ro")
    assert " - sysfs " in mount_line(out, "/sys")


def test_tmpcopyup(bundle):
    etc = bundle / "rootfs" / "etc"
    (etc / "sub").mkdir()
    (etc / "sub" / "inner").write_text("inner\n")
    os.symlink("/nowhere", etc / "link")
    spec = make_spec(mounts=default_mounts() + [
        {"destination": "/etc", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup"]}])
    code, out = run_in_container(bundle, spec, "cat /etc/passwd /etc/sub/inner; readlink /etc/link;"
                                 " touch /etc/new && echo new-ok; cat /proc/self/mountinfo")
    assert code == 0, out
    assert out.startswith("root:x:0:0:root:/root:/bin/sh\ninner\n/nowhere\nnew-ok\n"), out
    assert " - tmpfs " in mount_line(out, "/etc")
    assert not (etc / "new").exists()


def test_bad_source_fails_cleanly(bundle, tmp_path):
    spec = make_spec(mounts=default_mounts() + [
        {"destination": "/data", "type": "bind", "source": str(tmp_path / "missing"),
         "options": ["rbind"]}])
    code, out = run_in_container(bundle, spec, "echo RAN")
    assert code == 121 and "RAN" not in out
    assert "mounts[7].source: cannot bind" in out


def test_rshared_root_propagation_pivots(bundle):
    spec = make_spec()
    spec["linux"]["rootfsPropagation"] = "rshared"
    code, out = run_in_container(bundle, spec, "cat /proc/self/mountinfo")
    assert code == 0, out
    assert "shared:" in mount_line(out, "/")


def test_mount_into_procfs_through_a_symlink_refused(bundle):
    os.symlink("/proc/self", bundle / "rootfs" / "selfish")
    spec = make_spec(mounts=default_mounts() + [
        {"destination": "/selfish/attr", "type": "tmpfs", "source": "tmpfs"}])
    code, out = run_in_container(bundle, spec, "echo RAN")
    assert code == 121 and "RAN" not in out
    assert "mounts[7].destination: /selfish/attr resolves into procfs" in out


def test_lxcfs_style_file_over_proc_allowed(bundle, tmp_path):
    fake = tmp_path / "uptime"
    fake.write_text("1.00 2.00\n")
    spec = make_spec(mounts=default_mounts() + [
        {"destination": "/proc/uptime", "source": str(fake), "options": ["bind", "ro"]}])
    code, out = run_in_container(bundle, spec, "cat /proc/uptime")
    assert code == 0, out
    assert out == "1.00 2.00\n"


def owned_source(tmp_path):
    """A folder with one file owned by 5:6 on disk."""
    source = tmp_path / "owned"
    source.mkdir()
    (source / "file").write_text("x")
    os.chown(source / "file", 5, 6)
    return source


def test_idmapped_bind_shows_host_ids_shifted(bundle, tmp_path):
    source = owned_source(tmp_path)
    spec = make_spec(mounts=default_mounts() + [
        {"destination": "/data", "type": "bind", "source": str(source), "options": ["bind", "idmap"],
         "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 100}],
         "gidMappings": [{"containerID": 0, "hostID": 2000, "size": 100}]}])
    code, out = run_in_container(bundle, spec, "stat -c %u:%g /data/file")
    assert code == 0, out
    assert out == "1005:2006\n"


def test_idmap_with_a_user_namespace_uses_trees_prepared_on_the_host(bundle, tmp_path):
    source = owned_source(tmp_path)
    os.mkdir(bundle / "rootfs" / "data")
    spec = make_spec(rootless=True)
    spec["mounts"] = [m for m in spec["mounts"] if m["type"] != "cgroup"]
    spec["mounts"].append(
        {"destination": "/data", "type": "bind", "source": str(source), "options": ["bind", "idmap"],
         "uidMappings": [{"containerID": 0, "hostID": 100005, "size": 10}],
         "gidMappings": [{"containerID": 0, "hostID": 100005, "size": 10}]})
    # The container: 0 is host 0, 1.. is host 100000..
    code, out = run_in_container(bundle, spec, "stat -c %u:%g /data/file",
                                 facts=host_facts(userns=True), id_map="0 0 1\n1 100000 65535\n",
                                 flags=CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC)
    assert code == 0, out
    # disk 5 -> host 100010 -> container 11; disk 6 -> host 100011 -> container 12
    assert out == "11:12\n"


def test_symlink_planted_in_a_shared_volume_stays_inside(bundle, tmp_path):
    # CVE-2024-45310: another container planted a symlink in a volume this one mounts under.
    volume = tmp_path / "volume"
    outside = tmp_path / "host-side"
    volume.mkdir()
    outside.mkdir()
    os.symlink("/../../../../../../../" + str(outside).lstrip("/"), volume / "planted")
    spec = make_spec(mounts=default_mounts() + [
        {"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind"]},
        {"destination": "/vol/planted/made/here", "type": "tmpfs", "source": "tmpfs"}])
    code, out = run_in_container(bundle, spec, "cat /proc/self/mountinfo")
    assert code == 0, out
    assert os.listdir(outside) == []
    inside = bundle / "rootfs" / str(outside).lstrip("/") / "made" / "here"
    assert inside.is_dir()
    assert mount_line(out, str(outside) + "/made/here")


def test_missing_rootfs_fails_cleanly(bundle):
    spec = make_spec()
    spec["root"]["path"] = "no-such-rootfs"
    code, out = run_in_container(bundle, spec, "echo RAN")
    assert code == 121 and "RAN" not in out
    assert out.startswith("SETUP: root.path: cannot use ") and "no-such-rootfs" in out
    assert not (bundle / "no-such-rootfs").exists()


def test_destination_swapped_for_a_symlink_after_lookup_changes_nothing(bundle, tmp_path):
    # CVE-2021-30465: the image swaps a checked destination for a symlink to the host before
    # the mount happens. The mount follows the fd, so it lands on the renamed directory.
    outside = tmp_path / "host-target"
    outside.mkdir()
    rootfs_dir = bundle / "rootfs"
    (rootfs_dir / "vol" / "target").mkdir(parents=True)

    class SwappingKernel(Kernel):
        swapped = False

        def move_mount(self, from_dirfd, from_path, to_dirfd, to_path, flags):
            if not self.swapped:
                SwappingKernel.swapped = True
                os.rename(rootfs_dir / "vol" / "target", rootfs_dir / "vol" / "moved")
                os.symlink(str(outside), rootfs_dir / "vol" / "target")
            Kernel.move_mount(self, from_dirfd, from_path, to_dirfd, to_path, flags)

    spec = make_spec(mounts=[{"destination": "/vol/target", "type": "tmpfs", "source": "tmpfs"}]
                     + default_mounts())
    code, out = run_in_container(bundle, spec, "cat /proc/self/mountinfo", kernel_class=SwappingKernel)
    assert code == 0, out
    assert mount_line(out, "/vol/moved") and not mount_line(out, str(outside))
    assert os.listdir(outside) == []


def test_console_is_the_pty_slave_of_the_container_devpts(bundle):
    def open_console(kernel):
        master, slave = os.openpty()  # from /dev/ptmx -> pts/ptmx: the container's devpts
        apply_console(kernel, slave)

    code, out = run_in_container(bundle, make_spec(), "stat -c '%t:%T %F' /dev/console; "
                                 "cat /proc/self/mountinfo", after_pivot=open_console)
    assert code == 0, out
    assert out.startswith("88:0 character special file\n"), out  # major 136 = 0x88
    console = mount_line(out, "/dev/console")
    # "/0//deleted" once exec closed the (close-on-exec) master: the pty is gone, the bind stays.
    assert console and " - devpts " in console and console.split()[3].startswith("/0")
