"""The network state folder: where conflists, container records, CNI caches, namespaces, IPAM
leases and generated /etc files live, and how they are written (temp file + rename) and locked.

Layout under state_root: networks/NAME.conflist, containers/ID.json, cache/ID/NETWORK.json,
netns/ID, files/ID/{hosts,resolv.conf,hostname}, ipam/ (host-local dataDir), lock.
"""
import os

from capsa.errors import NetworkError
# json pulls in re, enum and functools (~8 ms per run); jsonlite is the same C codec without them
from capsa.jsonlite import dumps, loads

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def check_id(container_id):
    """Container ids become file names: no '/', no leading '.', 1-128 safe characters."""
    if not container_id or len(container_id) > 128 or container_id[0] == "." \
            or not set(container_id) <= _ID_CHARS:
        raise NetworkError("%r is not a valid container id" % (container_id,), field="container id",
                           hint="use letters, digits, '_', '.', '-'")
    return container_id


class Store:
    __slots__ = ("root", "networks", "containers", "cache", "netns", "files", "ipam")

    def __init__(self, root):
        self.root = root
        self.networks = os.path.join(root, "networks")
        self.containers = os.path.join(root, "containers")
        self.cache = os.path.join(root, "cache")
        self.netns = os.path.join(root, "netns")
        self.files = os.path.join(root, "files")
        self.ipam = os.path.join(root, "ipam")

    def ensure(self):
        for path in (self.root, self.networks, self.containers, self.cache, self.netns, self.files,
                     self.ipam):
            os.makedirs(path, mode=0o700, exist_ok=True)

    def lock(self):
        """An exclusive flock on state_root/lock, held until the returned fd is closed."""
        import fcntl
        self.ensure()
        fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def network_path(self, name):
        return os.path.join(self.networks, name + ".conflist")

    def record_path(self, container_id):
        return os.path.join(self.containers, container_id + ".json")

    def cache_path(self, container_id, network):
        return os.path.join(self.cache, container_id, network + ".json")

    def netns_path(self, container_id):
        return os.path.join(self.netns, container_id)

    def files_dir(self, container_id):
        return os.path.join(self.files, container_id)

    def network_names(self):
        try:
            names = os.listdir(self.networks)
        except FileNotFoundError:
            return []
        return sorted(n[:-len(".conflist")] for n in names if n.endswith(".conflist"))

    def record_ids(self):
        try:
            names = os.listdir(self.containers)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json"))


def read_json(path, missing=None):
    try:
        with open(path, "rb") as handle:
            return loads(handle.read())
    except FileNotFoundError:
        return missing
    except ValueError:
        raise NetworkError("%s is not valid JSON" % path, hint="remove it or fix it by hand")


def write_json(path, data):
    """Readers never see a half-written file: write a temp file, then rename over."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, dumps(data, indent=1).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_file(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_tree(path):
    """rm -rf of a state folder (plain files and folders), ignoring what is gone; shutil is not
    imported for it (bz2, lzma, fnmatch: ~2 ms on every run)."""
    try:
        entries = list(os.scandir(path))
    except NotADirectoryError:
        remove_file(path)
        return
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
        else:
            remove_file(entry.path)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
