"""Image sources and sinks on the local disk: OCI layouts (oci:), OCI and Docker archives
(oci-archive:, docker-archive:), skopeo's dir: format, rootfs folders and tarballs; and writing
docker-archive / oci-archive files for `save`. Engine side: imports tarfile/subprocess lazily;
must not import capsa.runtime. Every archive path is treated as hostile input.
"""
import json
import os

from capsa.errors import ImageError
from capsa.engine.images import manifest as mf
from capsa.engine.images.reference import (build_docker_reference, build_name,
                                           build_transport_reference, check_digest)

REF_NAME = "org.opencontainers.image.ref.name"


def _broken(what, why, hint="the archive is broken or not of that kind"):
    return ImageError("%s: %s" % (what, why), field="archive", hint=hint)


class _DirFiles:
    __slots__ = ("root",)

    def __init__(self, root):
        if not os.path.isdir(root):
            raise ImageError("%s is not a folder" % root, field="archive", hint="check the path")
        self.root = root

    def open(self, rel):
        from capsa.engine.images.layer import build_entry_path
        path = os.path.join(self.root, build_entry_path(rel))
        try:
            # O_NOFOLLOW on the last component only; a layout is the user's own folder
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise _broken(self.root, "cannot open %s (%s)" % (rel, exc.strerror)) from None
        return os.fdopen(fd, "rb")


class _TarFiles:
    """Regular files of a tar archive, looked up by normalised name (no extraction)."""

    __slots__ = ("path", "tar", "members")

    def __init__(self, path):
        import tarfile
        from capsa.engine.images.layer import build_entry_path
        self.path = path
        try:
            self.tar = tarfile.open(path, "r:*")
            self.members = {}
            for m in self.tar.getmembers():
                if m.isreg():
                    self.members[build_entry_path(m.name)] = m
        except FileNotFoundError:
            raise ImageError("%s does not exist" % path, field="archive", hint="check the path") \
                from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            from capsa.engine.images.layer import one_line
            raise _broken(path, "not a readable tar archive (%s)" % one_line(exc)) from None

    def open(self, rel):
        from capsa.engine.images.layer import build_entry_path
        member = self.members.get(build_entry_path(rel))
        if member is None:
            raise _broken(self.path, "has no file %s" % rel)
        return self.tar.extractfile(member)


def _read_small(files, rel, what, limit=16 << 20):
    with files.open(rel) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _broken(what, "%s is larger than %d bytes" % (rel, limit))
    return data


def _json(data, what):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _broken(what, "not valid JSON (%s)" % exc) from None


def _copy_to(src, dest, progress=None, digest=None, total=None):
    from capsa.engine.images.layer import apply_copy_stream
    with open(dest, "wb") as out:
        apply_copy_stream(src.read, out, progress, digest, total)


class LayoutSource:
    """oci:DIR[:NAME] and oci-archive:FILE[:NAME]."""

    def __init__(self, files, label, name):
        self.files = files
        # a folder's blobs can be read by several threads; one tarfile object cannot
        self.parallel = isinstance(files, _DirFiles)
        self.label = label
        self.name = name
        layout = _json(_read_small(files, "oci-layout", label), label + " oci-layout")
        if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
            raise _broken(label, "oci-layout has no imageLayoutVersion")
        self.index_raw = _read_small(files, "index.json", label)
        self.index = _json(self.index_raw, label + " index.json")
        self.chosen = None

    def describe(self):
        return self.label

    def pick(self):
        manifests = self.index.get("manifests") if isinstance(self.index, dict) else None
        if not isinstance(manifests, list) or not manifests:
            raise _broken(self.label, "index.json lists no manifests")
        if self.name:
            for desc in manifests:
                if (desc.get("annotations") or {}).get(REF_NAME) == self.name:
                    return desc
            names = [(d.get("annotations") or {}).get(REF_NAME) for d in manifests]
            raise ImageError("%s has no image named %r (it has: %s)"
                             % (self.label, self.name, ", ".join(n for n in names if n) or "none"),
                             field="reference", hint="name one of them after the path")
        if len(manifests) == 1:
            return manifests[0]
        return None

    def read_manifest(self, digest=None):
        if digest is None:
            desc = self.pick()
            if desc is None:
                return self.index_raw, mf.OCI_INDEX
            self.chosen = desc
            digest = check_digest(desc.get("digest"), "index.json manifest digest")
            raw = self.read_blob_bytes(digest)
            from capsa.engine.images.store import _check_bytes
            _check_bytes(raw, digest)
            return raw, desc.get("mediaType")
        return self.read_blob_bytes(digest), None

    def read_blob_bytes(self, digest):
        return _read_small(self.files, "blobs/sha256/" + digest.partition(":")[2], self.label)

    def fetch_blob(self, digest, size, dest, progress=None):
        with self.files.open("blobs/sha256/" + digest.partition(":")[2]) as src:
            _copy_to(src, dest, progress, digest, size)

    def ref_name(self):
        return ((self.chosen or {}).get("annotations") or {}).get(REF_NAME)


class DockerArchiveSource:
    """docker-archive:FILE[:NAME] (docker save / podman save / skopeo): manifest.json + tars."""

    parallel = False

    def __init__(self, path, name):
        self.files = _TarFiles(path)
        self.label = "docker-archive:" + path
        entries = _json(_read_small(self.files, "manifest.json", self.label), self.label)
        if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
            raise _broken(self.label, "manifest.json is not a list of images")
        entry = entries[0]
        if name:
            want = build_name(build_docker_reference(name))
            for e in entries:
                if want in [build_name(build_docker_reference(t)) for t in e.get("RepoTags") or []]:
                    entry = e
                    break
            else:
                raise ImageError("%s has no image named %r" % (self.label, name),
                                 field="reference", hint="see RepoTags in its manifest.json")
        if not isinstance(entry.get("Config"), str) or not isinstance(entry.get("Layers"), list):
            raise _broken(self.label, "manifest.json entry has no Config or Layers")
        self.repo_tags = [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
        import hashlib
        self.paths = {}
        config = _read_small(self.files, entry["Config"], self.label)
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        self.config = config
        layers = []
        for rel in entry["Layers"]:
            h, size, head = hashlib.sha256(), 0, b""
            with self.files.open(rel) as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    if not head:
                        head = chunk[:4]
                    h.update(chunk)
                    size += len(chunk)
            digest = "sha256:" + h.hexdigest()
            self.paths[digest] = rel
            compression = "gzip" if head[:2] == b"\x1f\x8b" else \
                "zstd" if head == b"\x28\xb5\x2f\xfd" else None
            layers.append({"mediaType": mf.build_oci_layer_type(mf.OCI_LAYER, compression),
                           "digest": digest, "size": size})
        self.paths[config_digest] = entry["Config"]
        self.manifest = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
                                    "config": {"mediaType": mf.OCI_CONFIG, "digest": config_digest,
                                               "size": len(config)},
                                    "layers": layers}, sort_keys=True).encode()

    def describe(self):
        return self.label

    def read_manifest(self, digest=None):
        return self.manifest, mf.OCI_MANIFEST

    def fetch_blob(self, digest, size, dest, progress=None):
        rel = self.paths.get(digest)
        if rel is None:
            raise _broken(self.label, "has no blob %s" % digest)
        with self.files.open(rel) as src:
            _copy_to(src, dest, progress, digest, size)


class DirSource:
    """skopeo's dir:PATH: manifest.json and blobs named by their hex digest."""

    parallel = True

    def __init__(self, path):
        self.files = _DirFiles(path)
        self.label = "dir:" + path

    def describe(self):
        return self.label

    def read_manifest(self, digest=None):
        if digest is None:
            return _read_small(self.files, "manifest.json", self.label), None
        return _read_small(self.files, digest.partition(":")[2] + ".manifest.json", self.label), None

    def fetch_blob(self, digest, size, dest, progress=None):
        with self.files.open(digest.partition(":")[2]) as src:
            _copy_to(src, dest, progress, digest, size)


class StoredSource:
    """An image whose blobs are all in the store already (import_rootfs)."""

    parallel = False

    def __init__(self, manifest, label):
        self.manifest = manifest
        self.label = label

    def describe(self):
        return self.label

    def read_manifest(self, digest=None):
        return self.manifest, mf.OCI_MANIFEST

    def fetch_blob(self, digest, size, dest, progress=None):
        raise ImageError("blob %s vanished from the store during import" % digest,
                         hint="run the import again")


def _name_for(ref_name, path):
    """Stored name for an image from a layout: a full name annotation, else localhost/BASENAME:TAG."""
    from capsa.engine.images.store import build_store_name
    base = os.path.basename(os.path.normpath(path)).lower()
    base = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).strip("._-") or "image"
    for suffix in (".tar", ".oci"):
        if base.endswith(suffix) and len(base) > len(suffix):
            base = base[:-len(suffix)]
    if ref_name and ("/" in ref_name or ":" in ref_name):
        return build_store_name(ref_name)
    return build_store_name("%s:%s" % (base, ref_name or "latest"))


def build_source(text):
    """(source, [stored names]) for a file transport reference."""
    ref = build_transport_reference(text)
    kind = ref["transport"]
    if kind == "docker":
        raise ImageError("%r is a registry reference, not a file transport" % text,
                         field="reference", hint="use pull, or oci:, oci-archive:, docker-archive:, dir:")
    path = os.path.abspath(ref["path"])
    if kind == "oci":
        source = LayoutSource(_DirFiles(path), "oci:" + path, ref["name"])
    elif kind == "oci-archive":
        source = LayoutSource(_TarFiles(path), "oci-archive:" + path, ref["name"])
    elif kind == "docker-archive":
        source = DockerArchiveSource(path, ref["name"])
        from capsa.engine.images.store import build_store_name
        if ref["name"]:
            return source, [build_store_name(ref["name"])]
        names = [build_name(build_docker_reference(t)) for t in source.repo_tags]
        return source, names or [_name_for(None, path)]
    else:
        return DirSource(path), [_name_for(None, path)]
    desc = source.pick()
    ref_name = ((desc or {}).get("annotations") or {}).get(REF_NAME) or ref["name"]
    return source, [_name_for(ref_name, path)]


def read_archive_kind(path):
    """'docker-archive' or 'oci-archive' for a tar file (`load -i`)."""
    files = _TarFiles(path)
    if "manifest.json" in files.members:
        return "docker-archive"
    if "index.json" in files.members and "oci-layout" in files.members:
        return "oci-archive"
    raise _broken(path, "neither manifest.json (docker-archive) nor index.json+oci-layout "
                  "(oci-archive) in it", hint="give an archive made by save, podman or skopeo")


# ---- rootfs import ------------------------------------------------------------------------------
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def build_rootfs_config(diff_id, machine, changes=None, created=None):
    """The image config of a one-layer rootfs image (Env PATH, plus `changes`)."""
    inner = {"Env": ["PATH=" + DEFAULT_PATH]}
    for key, value in (changes or {}).items():
        if key not in mf.CONFIG_KEYS:
            raise ImageError("unknown image config key %r" % key, field="change",
                             hint="use one of " + ", ".join(mf.CONFIG_KEYS))
        inner[key] = value
    plat = mf.build_host_platform(machine)
    return {"architecture": plat["architecture"], "os": "linux", "created": created,
            "config": inner, "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "capsa import"}]}


def apply_tar_folder(folder, dest):
    """Write an uncompressed tar of `folder` (numeric owners, xattrs, device nodes) to `dest`."""
    import subprocess
    proc = subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                           "--format=pax", "-C", folder, "-cf", dest, "."],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise ImageError("cannot archive folder %s: %s" % (folder, proc.stderr.decode(
            errors="replace").strip().splitlines()[-1:]), field="rootfs",
            hint="check the folder is readable")


def apply_import_rootfs(store, path, name, changes=None):
    import platform
    import time
    from capsa.engine.images.layer import DecompressedFile, HashingReader
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError("rootfs %s does not exist" % path, field="rootfs",
                         hint="give a folder or a .tar[.gz|.xz|.zst] file")
    with store.lock("gc", shared=True):
        tmp = store.temp_path("rootfs")
        try:
            if os.path.isdir(path):
                apply_tar_folder(path, tmp)
            else:
                with DecompressedFile(path) as raw, open(tmp, "wb") as out:
                    reader = HashingReader(raw)
                    while True:
                        chunk = reader.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
            diff_id = store.put_blob_file(tmp)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        config = json.dumps(build_rootfs_config(diff_id, platform.machine(), changes, created),
                            sort_keys=True).encode()
        config_digest = store.put_blob_bytes(config)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
                               "config": {"mediaType": mf.OCI_CONFIG, "digest": config_digest,
                                          "size": len(config)},
                               "layers": [{"mediaType": mf.OCI_LAYER, "digest": diff_id,
                                           "size": os.path.getsize(store.blob_path(diff_id))}]},
                              sort_keys=True).encode()
        label = "rootfs:" + os.path.abspath(path)
    return store.commit(StoredSource(manifest, label), [name])


# ---- save ---------------------------------------------------------------------------------------
def apply_save(store, refs, path, format):
    """Write `refs` into the tar `path` (docker-archive or oci-archive), atomically."""
    import tarfile
    from capsa.engine.images.layer import read_compression
    if format not in ("docker-archive", "oci-archive"):
        raise ImageError("unknown archive format %r" % format, field="format",
                         hint="use docker-archive or oci-archive")
    images = []
    for ref in refs:
        image_id, name = store.lookup(ref)
        record = store.read_record(image_id)
        names = [name] if name else store.names_of(image_id)
        images.append((record, names))
    tmp = "%s.tmp-%d" % (path, os.getpid())
    written = set()
    temps = []

    def add_file(tar, arcname, src):
        if arcname in written:
            return
        written.add(arcname)
        info = tar.gettarinfo(src, arcname)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o644
        with open(src, "rb") as f:
            tar.addfile(info, f)

    def add_bytes(tar, arcname, data):
        import io
        info = tarfile.TarInfo(arcname)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))

    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            if format == "oci-archive":
                add_bytes(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
                index = {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": []}
                for record, names in images:
                    comps = [read_compression(store.blob_path(l["digest"])) for l in record["layers"]]
                    body = json.dumps(mf.build_oci_manifest(record, comps), sort_keys=True).encode()
                    digest = store.put_blob_bytes(body)
                    for blob in [record["config_digest"], digest] + \
                            [l["digest"] for l in record["layers"]]:
                        add_file(tar, "blobs/sha256/" + blob.partition(":")[2],
                                 store.blob_path(blob))
                    for name in names or [None]:
                        desc = {"mediaType": mf.OCI_MANIFEST, "digest": digest, "size": len(body)}
                        if name:
                            desc["annotations"] = {REF_NAME: name}
                        index["manifests"].append(desc)
                add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
            else:
                from capsa.engine.images.layer import DecompressedFile
                entries = []
                for record, names in images:
                    cfg = record["config_digest"].partition(":")[2] + ".json"
                    add_file(tar, cfg, store.blob_path(record["config_digest"]))
                    layer_names = []
                    for layer in record["layers"]:
                        arc = layer["diff_id"].partition(":")[2] + "/layer.tar"
                        layer_names.append(arc)
                        blob = store.blob_path(layer["digest"])
                        if read_compression(blob) is None:
                            add_file(tar, arc, blob)
                            continue
                        plain = store.temp_path("save")
                        temps.append(plain)
                        with DecompressedFile(blob) as src:
                            _copy_to(src, plain)
                        add_file(tar, arc, plain)
                        os.unlink(plain)
                    entries.append({"Config": cfg, "Layers": layer_names,
                                    "RepoTags": [n for n in names if "@" not in n]})
                add_bytes(tar, "manifest.json", json.dumps(entries).encode())
        os.replace(tmp, path)
    except BaseException:
        for t in temps + [tmp]:
            if os.path.exists(t):
                os.unlink(t)
        raise
    return path
