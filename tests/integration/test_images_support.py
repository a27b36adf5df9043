"""Fixtures for the image tests, built offline from /bin/busybox with umoci and skopeo, and a
docker-registry on a free 127.0.0.1 port. Helpers only: this module holds no tests.
"""
import json
import os
import shutil
import socket
import subprocess
import time


def have(*tools):
    return all(shutil.which(t) for t in tools)


def run(*argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def build_busybox_rootfs(dest, applets=("sh", "ls", "cat", "echo", "mkdir", "rm", "touch", "test",
                                        "stat", "true", "id", "mount", "readlink")):
    os.makedirs(os.path.join(dest, "bin"), exist_ok=True)
    os.makedirs(os.path.join(dest, "etc"), exist_ok=True)
    for sub in ("proc", "sys", "dev", "tmp", "root"):
        os.makedirs(os.path.join(dest, sub), exist_ok=True)
    shutil.copy2("/bin/busybox", os.path.join(dest, "bin", "busybox"))
    for applet in applets:
        os.symlink("busybox", os.path.join(dest, "bin", applet))
    with open(os.path.join(dest, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(dest, "etc", "group"), "w") as f:
        f.write("root:x:0:\n")
    return dest


def build_oci_layout(workdir, layers, tag="latest"):
    """An OCI layout at workdir/oci with one umoci layer per folder in `layers` (each folder's
    content is applied on top of the previous one, deletions become whiteouts)."""
    layout = os.path.join(workdir, "oci")
    bundle = os.path.join(workdir, "bundle")
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", layout + ":" + tag)
    for step in layers:
        shutil.rmtree(bundle, ignore_errors=True)
        run("umoci", "unpack", "--rootless" if os.geteuid() else "--keep-dirlinks",
            "--image", layout + ":" + tag, bundle)
        step(os.path.join(bundle, "rootfs"))
        run("umoci", "repack", "--image", layout + ":" + tag, bundle)
    run("umoci", "config", "--image", layout + ":" + tag, "--config.cmd", "/bin/sh",
        "--config.env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "--config.workingdir", "/")
    shutil.rmtree(bundle, ignore_errors=True)
    return layout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """Debian's docker-registry on 127.0.0.1:<free port>, anonymous or with htpasswd users."""

    def __init__(self, workdir, htpasswd=None):
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.dir = os.path.join(workdir, "registry")
        os.makedirs(self.dir, exist_ok=True)
        conf = ["version: 0.1", "log:", "  level: error", "storage:",
                "  filesystem:", "    rootdirectory: %s/data" % self.dir,
                "  delete:", "    enabled: true", "http:", "  addr: %s" % self.addr]
        if htpasswd:
            conf += ["auth:", "  htpasswd:", "    realm: capsa-test", "    path: %s" % htpasswd]
        self.conf = os.path.join(self.dir, "config.yml")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        self.log = open(os.path.join(self.dir, "registry.log"), "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", self.conf], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not start: see %s/registry.log" % self.dir)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def skopeo_copy(self, src, name, *extra):
        run("skopeo", "copy", "--dest-tls-verify=false", *extra, src,
            "docker://%s/%s" % (self.addr, name))


def write_auth(path, registry, user, password):
    import base64
    with open(path, "w") as f:
        json.dump({"auths": {registry: {"auth": base64.b64encode(
            ("%s:%s" % (user, password)).encode()).decode()}}}, f)
    return path
