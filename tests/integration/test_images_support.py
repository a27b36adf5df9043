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

    def __init__(self, workdir, htpasswd=None, tls=False):
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.dir = os.path.join(workdir, "registry")
        os.makedirs(self.dir, exist_ok=True)
        conf = ["version: 0.1", "log:", "  level: error", "storage:",
                "  filesystem:", "    rootdirectory: %s/data" % self.dir,
                "  delete:", "    enabled: true", "http:", "  addr: %s" % self.addr]
        if tls:
            cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
            run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                "-keyout", key, "-out", cert)
            conf += ["  tls:", "    certificate: " + cert, "    key: " + key]
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


def build_layer_tar(entries):
    """An uncompressed layer tar from (name, kind, extra, meta) entries; kind is file, dir,
    symlink, link, chr or fifo; meta may set uid, gid, mode, xattrs."""
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            name, kind, extra = entry[:3]
            meta = entry[3] if len(entry) > 3 else {}
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            info.uid, info.gid = meta.get("uid", 0), meta.get("gid", 0)
            info.mode = meta.get("mode", 0o755 if kind == "dir" else 0o644)
            if meta.get("xattrs"):
                info.pax_headers = {"SCHILY.xattr." + k: v for k, v in meta["xattrs"].items()}
            data = None
            if kind == "file":
                data = extra.encode() if isinstance(extra, str) else extra
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = extra
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def build_layout(path, layer_tars, cmd=("/bin/sh",), name="latest", gzip_layers=True):
    """An OCI image layout at `path` holding one image made of `layer_tars` (bytes)."""
    import gzip
    import hashlib

    def put(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(path, "blobs", "sha256", digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}
    os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
    layers, diff_ids = [], []
    for tar in layer_tars:
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        blob = gzip.compress(tar, mtime=0) if gzip_layers else tar
        layers.append(dict(put(blob), mediaType="application/vnd.oci.image.layer.v1.tar" +
                           ("+gzip" if gzip_layers else "")))
    config = put(json.dumps({"architecture": "amd64", "os": "linux",
                             "config": {"Cmd": list(cmd), "Env": ["PATH=/bin"]},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode())
    manifest = put(json.dumps({"schemaVersion": 2,
                               "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": dict(config,
                                              mediaType="application/vnd.oci.image.config.v1+json"),
                               "layers": layers}).encode())
    with open(os.path.join(path, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion": "1.0.0"}')
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [dict(
            manifest, mediaType="application/vnd.oci.image.manifest.v1+json",
            annotations={"org.opencontainers.image.ref.name": name})]}, f)
    return path


def read_loop_backings():
    """{device: backing file} of every attached loop device."""
    found = {}
    for name in os.listdir("/sys/block"):
        try:
            with open("/sys/block/%s/loop/backing_file" % name) as f:
                found["/dev/" + name] = f.read().strip()
        except OSError:
            pass
    return found


def read_mount_lines(word):
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if word in line]


def htpasswd_line(user, password):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
        return "%s:%s\n" % (user, crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))
