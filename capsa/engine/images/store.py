"""The image store: content-addressed blobs, one unpacked folder per layer, image records, tags,
users (containers holding an image) and garbage collection.

Layout under <root>/images: blobs/sha256/<hex>, layers/<diff_id hex>/, meta/<id hex>.json,
tags.json, users/<id hex>/, tmp/, locks/. Only verified content is ever renamed into blobs/ or
layers/, so an interrupted pull leaves nothing a later run trusts. Engine side: may use threads
and subprocess, imported lazily; must not import capsa.runtime.
"""
import os

from capsa import jsonlite
from capsa.errors import ImageError
from capsa.engine.images import manifest as mf
from capsa.engine.images.reference import (build_docker_reference, build_name,
                                           build_transport_reference, check_digest)

_HEX = frozenset("0123456789abcdef")


def build_store_name(text):
    """Canonical stored name for a user-given name: unqualified names live under localhost/."""
    return build_name(build_docker_reference(text, default_registry="localhost"))


def _hex(digest):
    return digest.partition(":")[2]


def _sha256(data=b""):
    # the builtin _sha256 module (CPython 3.11) loads in 0.1 ms; hashlib loads OpenSSL, ~3 ms
    try:
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    return sha256(data)


def build_path_key(path):
    """The file name under which a container folder is recorded (users/, attachments/)."""
    return _sha256(os.path.abspath(path).encode()).hexdigest()[:32]


def _sha256_file(path):
    h = _sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return "sha256:" + h.hexdigest()
            h.update(chunk)


def write_json_atomic(path, data, durable=True):
    """Write JSON to a temp file in the same folder, fsync (when `durable`), rename: never a
    half-written file."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(jsonlite.dumps(data, indent=1))
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


class _Lock:
    """An flock(2) on locks/<name>.lock; shared or exclusive. Released on close (or process death,
    which is why a crashed pull never blocks the next one)."""

    __slots__ = ("path", "shared", "fd")

    def __init__(self, path, shared=False):
        self.path = path
        self.shared = shared
        self.fd = None

    def __enter__(self):
        import fcntl
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        self.fd = None


class ImageStore:
    """The image store rooted at `root` (the capsa store root, e.g. /var/lib/capsa)."""

    def __init__(self, root, registries_conf=None, auth_file=None, platform=None):
        self.root = os.fspath(root)
        self.dir = os.path.join(self.root, "images")
        self.registries_conf = registries_conf
        self.auth_file = auth_file
        self.platform = platform
        self._conf = None

    # ---- layout -------------------------------------------------------------------------------
    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def ensure(self):
        for sub in ("blobs/sha256", "layers", "meta", "users", "tmp", "locks"):
            os.makedirs(self.path(sub), mode=0o700, exist_ok=True)

    def lock(self, name, shared=False):
        self.ensure()
        return _Lock(self.path("locks", name + ".lock"), shared)

    def registries(self):
        if self._conf is None:
            from capsa.engine.images.config import read_registries_conf
            self._conf = read_registries_conf(self.root, self.registries_conf)
        return self._conf

    def blob_path(self, digest):
        return self.path("blobs", "sha256", _hex(check_digest(digest)))

    def has_blob(self, digest):
        return os.path.isfile(self.blob_path(digest))

    def layer_dir(self, diff_id):
        return self.path("layers", _hex(check_digest(diff_id)))

    # ---- blobs and layers ---------------------------------------------------------------------
    def put_blob_file(self, tmp_path, digest=None):
        """Move a finished temp file into blobs/ after checking (or computing) its digest."""
        actual = _sha256_file(tmp_path)
        if digest is not None and actual != digest:
            os.unlink(tmp_path)
            raise ImageError("digest mismatch: expected %s, got %s" % (digest, actual),
                             field="digest", hint="the source is corrupt or was tampered with; "
                             "nothing was stored")
        os.replace(tmp_path, self.blob_path(actual))
        return actual

    def put_blob_bytes(self, data, digest=None):
        tmp = self.temp_path("bytes")
        with open(tmp, "wb") as f:
            f.write(data)
        return self.put_blob_file(tmp, digest)

    def temp_path(self, what):
        self.ensure()
        return self.path("tmp", "%s-%d-%s" % (what, os.getpid(), os.urandom(6).hex()))

    def get_blob(self, source, digest, size=None, progress=None):
        """Path of blob `digest`, fetched from `source` once (per-digest lock) and verified."""
        check_digest(digest)
        path = self.blob_path(digest)
        if os.path.isfile(path):
            return path
        with self.lock("blob-" + _hex(digest)):
            if os.path.isfile(path):
                return path
            # the partial file is kept across runs only to resume; it is hashed in full before use
            partial = self.path("tmp", _hex(digest) + ".partial")
            source.fetch_blob(digest, size, partial, progress)
            if size is not None and size >= 0 and os.path.getsize(partial) != size:
                got = os.path.getsize(partial)
                os.unlink(partial)
                raise ImageError("blob %s has %d bytes, the manifest says %d" % (digest, got, size),
                                 field="digest", hint="the source is corrupt; nothing was stored")
            self.put_blob_file(partial, digest)
        return path

    def ensure_layer(self, layer):
        """Unpack the layer blob into layers/<diff_id hex>/ once; verify the diff_id."""
        from capsa.engine.images.layer import DecompressedFile, HashingReader, apply_unpack_layer
        dest = self.layer_dir(layer["diff_id"])
        if os.path.isdir(dest):
            return dest
        with self.lock("layer-" + _hex(layer["diff_id"])):
            if os.path.isdir(dest):
                return dest
            tmp = self.path("layers", ".tmp-%s-%d" % (_hex(layer["diff_id"])[:16], os.getpid()))
            _remove_tree(tmp)
            os.mkdir(tmp, 0o755)
            try:
                with DecompressedFile(self.blob_path(layer["digest"])) as raw:
                    reader = HashingReader(raw)
                    apply_unpack_layer(reader, tmp, overlay=True)
                    diff_id = reader.drain()
                if diff_id != layer["diff_id"]:
                    raise ImageError("digest mismatch: layer %s unpacks to %s, the config says %s"
                                     % (layer["digest"], diff_id, layer["diff_id"]),
                                     field="config.rootfs.diff_ids",
                                     hint="the image is corrupt or was tampered with")
                os.rename(tmp, dest)
            except BaseException:
                _remove_tree(tmp)
                raise
        return dest

    # ---- records and tags ---------------------------------------------------------------------
    def read_tags(self):
        try:
            with open(self.path("tags.json"), "rb") as f:
                return jsonlite.loads(f.read())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise ImageError("%s is corrupt" % self.path("tags.json"), field="tags.json",
                             hint="restore it, or remove it and tag images again") from None

    def read_record(self, image_id):
        try:
            with open(self.path("meta", _hex(image_id) + ".json"), "rb") as f:
                return jsonlite.loads(f.read())
        except FileNotFoundError:
            raise ImageError("image %s has no record in the store" % image_id,
                             hint="pull or import it again") from None

    def records(self):
        try:
            names = os.listdir(self.path("meta"))
        except FileNotFoundError:
            return []
        return [self.read_record("sha256:" + n[:-5]) for n in sorted(names)
                if n.endswith(".json") and len(n) == 69]

    def commit(self, source, names, platform=None, progress=None):
        """Store the image `source` describes (manifest, config, layers); tag it with `names`."""
        import platform as host
        want = mf.build_platform(platform or self.platform, host.machine())
        with self.lock("gc", shared=True):
            raw, declared = source.read_manifest()
            doc = _parse_json(raw, "manifest of " + source.describe())
            kind = mf.build_media_type(doc, declared)
            if kind in mf.INDEXES:
                desc = mf.build_select_platform(doc, want)
                digest = check_digest(desc.get("digest"), "index manifest digest")
                raw, declared = source.read_manifest(digest)
                _check_bytes(raw, digest)
                doc = _parse_json(raw, "manifest " + digest)
                kind = mf.build_media_type(doc, desc.get("mediaType") or declared)
                if kind in mf.INDEXES:
                    raise ImageError("nested image index in %s" % source.describe(),
                                     field="manifest", hint="capsa reads one level of index")
            config_desc = doc.get("config") or {}
            config_digest = check_digest(config_desc.get("digest"), "config digest")
            config_path = self.get_blob(source, config_digest, config_desc.get("size"))
            with open(config_path, "rb") as f:
                config = _parse_json(f.read(), "config " + config_digest)
            layers = mf.build_layers(doc, config)
            self._fetch_layers(source, layers, progress)
            manifest_digest = self.put_blob_bytes(raw)
            record = {"id": config_digest, "config_digest": config_digest,
                      "config_size": os.path.getsize(config_path),
                      "manifest_digest": manifest_digest, "manifest_media_type": kind,
                      "layers": layers, "created": config.get("created"),
                      "architecture": config.get("architecture"), "os": config.get("os"),
                      "size": sum(layer["size"] for layer in layers),
                      "source": source.describe()}
            self.write_record(record, names)
        return config_digest

    def _fetch_layers(self, source, layers, progress):
        def one(layer):
            self.get_blob(source, layer["digest"], layer["size"], progress)
            self.ensure_layer(layer)
        if getattr(source, "parallel", False) and len(layers) > 1:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(max_workers=min(4, len(layers))) as pool:
                for future in [pool.submit(one, layer) for layer in layers]:
                    future.result()
        else:
            for layer in layers:
                one(layer)

    def write_record(self, record, names):
        with self.lock("meta"):
            write_json_atomic(self.path("meta", _hex(record["id"]) + ".json"), record)
            if names:
                tags = self.read_tags()
                for name in names:
                    tags[name] = record["id"]
                write_json_atomic(self.path("tags.json"), tags)

    def names_of(self, image_id, tags=None):
        tags = self.read_tags() if tags is None else tags
        return sorted(name for name, iid in tags.items() if iid == image_id)

    # ---- lookup -------------------------------------------------------------------------------
    def lookup(self, ref):
        """(image id, name or None) for a name, short name or id prefix; ImageError if absent."""
        if not isinstance(ref, str) or not ref:
            raise ImageError("empty image reference", field="image", hint="name an image")
        text = ref[len("docker://"):] if ref.startswith("docker://") else ref
        bare = text[7:] if text.startswith("sha256:") else text
        if len(bare) == 64 and set(bare) <= _HEX \
                and os.path.isfile(self.path("meta", bare + ".json")):
            # a full id (run resolves the image once, then mounts it by id): one stat, not
            # every record read
            return "sha256:" + bare, None
        if 6 <= len(bare) <= 64 and set(bare) <= _HEX:
            ids = [r["id"] for r in self.records() if _hex(r["id"]).startswith(bare)]
            if len(ids) == 1:
                return ids[0], None
            if len(ids) > 1:
                raise ImageError("image id prefix %r is ambiguous (%d images)" % (bare, len(ids)),
                                 field="image", hint="give more digits")
        tags = self.read_tags()
        for name in self._candidates(text):
            if name in tags:
                return tags[name], name
        raise ImageError("image %r is not in the store" % ref, field="image",
                         hint="pull or import it first; `capsa images` lists the store")

    def candidates(self, text):
        """Stored names a reference may mean, in lookup order (localhost/, then search registries)."""
        return list(self._candidates(text))

    def _candidates(self, text):
        # lazily: a local tag is matched before registries.conf is read (tomllib costs ~8 ms)
        ref = build_docker_reference(text, default_registry="localhost")
        yield build_name(ref)
        if ref["qualified"]:
            return
        for registry in self.registries()["search"]:
            yield build_name(build_docker_reference(text, default_registry=registry))

    def resolve(self, ref):
        """The image record for `ref`, with "names", "config" (Entrypoint, Cmd, Env, WorkingDir,
        User, StopSignal, Volumes, ExposedPorts, Labels) and "layer_dirs" (bottom to top)."""
        image_id, _ = self.lookup(ref)
        record = self.read_record(image_id)
        with open(self.blob_path(record["config_digest"]), "rb") as f:
            full = _parse_json(f.read(), "config " + record["config_digest"])
        record["config"] = mf.build_run_config(full)
        record["names"] = self.names_of(image_id)
        record["layer_dirs"] = [self.layer_dir(layer["diff_id"]) for layer in record["layers"]]
        for layer_dir in record["layer_dirs"]:
            if not os.path.isdir(layer_dir):
                raise ImageError("layer %s of image %s is missing from the store" % (layer_dir, ref),
                                 hint="remove the image and pull or import it again")
        return record

    def list(self):
        """[{id, names, created, size, layers}] for every stored image."""
        tags = self.read_tags()
        return [{"id": r["id"], "names": self.names_of(r["id"], tags), "created": r.get("created"),
                 "size": r.get("size", 0), "layers": len(r["layers"]),
                 "architecture": r.get("architecture"), "os": r.get("os")}
                for r in self.records()]

    def tag(self, src, dst):
        image_id, _ = self.lookup(src)
        name = build_store_name(dst)
        with self.lock("meta"):
            tags = self.read_tags()
            tags[name] = image_id
            write_json_atomic(self.path("tags.json"), tags)
        return name

    # ---- users (containers) -------------------------------------------------------------------
    def add_user(self, image_id, container_dir):
        folder = self.path("users", _hex(image_id))
        os.makedirs(folder, exist_ok=True)
        key = build_path_key(container_dir)
        with open(os.path.join(folder, key), "w") as f:
            f.write(os.path.abspath(container_dir))

    def remove_user(self, image_id, container_dir):
        key = build_path_key(container_dir)
        try:
            os.unlink(self.path("users", _hex(image_id), key))
        except FileNotFoundError:
            pass

    def users(self, image_id):
        """Container folders using the image; entries whose folder is gone are dropped."""
        folder = self.path("users", _hex(image_id))
        found = []
        try:
            entries = os.listdir(folder)
        except FileNotFoundError:
            return found
        for key in entries:
            with open(os.path.join(folder, key)) as f:
                where = f.read()
            if os.path.isdir(where):
                found.append(where)
            else:
                os.unlink(os.path.join(folder, key))
        return found

    # ---- removal and garbage collection -------------------------------------------------------
    def remove(self, ref, force=False):
        """Untag `ref` if the image has other names; else delete the image (refused while a
        container uses it, unless force). Returns {"untagged": [...], "deleted": [...]}."""
        image_id, name = self.lookup(ref)
        with self.lock("gc"):
            with self.lock("meta"):
                tags = self.read_tags()
                names = [n for n, iid in tags.items() if iid == image_id]
                if name is not None and len(names) > 1:
                    del tags[name]
                    write_json_atomic(self.path("tags.json"), tags)
                    return {"untagged": [name], "deleted": []}
                users = self.users(image_id)
                if users and not force:
                    raise ImageError("image %s is used by %d container(s) (%s)"
                                     % (ref, len(users), users[0]), field="image",
                                     hint="remove the containers first, or use --force")
                for n in names:
                    del tags[n]
                write_json_atomic(self.path("tags.json"), tags)
                _unlink(self.path("meta", _hex(image_id) + ".json"))
                _remove_tree(self.path("users", _hex(image_id)))
            freed = self._collect()
        return {"untagged": sorted(names), "deleted": [image_id], "freed": freed}

    def prune(self, all_images=False):
        """Delete dangling images (no name), or every unused image with all_images; then every
        blob, layer and temp file no record needs. Returns {"deleted": [ids], "freed": bytes}."""
        deleted = []
        self.ensure()
        with self.lock("gc"):
            with self.lock("meta"):
                tags = self.read_tags()
                named = set(tags.values())
                for record in self.records():
                    iid = record["id"]
                    if (iid in named and not all_images) or self.users(iid):
                        continue
                    for n in [n for n, v in tags.items() if v == iid]:
                        del tags[n]
                    _unlink(self.path("meta", _hex(iid) + ".json"))
                    _remove_tree(self.path("users", _hex(iid)))
                    deleted.append(iid)
                write_json_atomic(self.path("tags.json"), tags)
            freed = self._collect()
        return {"deleted": deleted, "freed": freed}

    def _used_content(self):
        """(blob hexes, layer hexes) some image record refers to."""
        blobs, layers = set(), set()
        for record in self.records():
            blobs.update((_hex(record["config_digest"]), _hex(record["manifest_digest"])))
            for layer in record["layers"]:
                blobs.add(_hex(layer["digest"]))
                layers.add(_hex(layer["diff_id"]))
        return blobs, layers

    def _collect(self):
        """Remove unreferenced blobs, layers and temp files. Caller holds the exclusive gc lock,
        so no pull or import is running (they hold it shared)."""
        blobs, layers = self._used_content()
        freed = 0
        for name in _listdir(self.path("blobs", "sha256")):
            if name not in blobs:
                freed += _unlink(self.path("blobs", "sha256", name))
        for name in _listdir(self.path("layers")):
            if name not in layers:
                freed += _remove_tree(self.path("layers", name))
        for name in _listdir(self.path("tmp")):
            freed += _remove_tree(self.path("tmp", name))
        return freed

    # ---- sources ------------------------------------------------------------------------------
    def pull(self, ref, tls_verify=True, progress=None, platform=None):
        """Pull `ref` (docker://… or a docker reference) from its registry; returns the image id.
        Unqualified names try the search registries of registries.conf in order."""
        from capsa.engine.images.registry import RegistrySource
        parsed = build_transport_reference(ref)
        if parsed["transport"] != "docker":
            return self.import_transport(ref)
        if parsed["qualified"]:
            tries = [parsed]
        else:
            text = ref[len("docker://"):] if ref.startswith("docker://") else ref
            tries = [build_docker_reference(text, default_registry=r)
                     for r in self.registries()["search"]]
        errors = []
        for target in tries:
            source = RegistrySource(self, target, tls_verify=tls_verify)
            try:
                return self.commit(source, [build_name(target)], platform, progress)
            except ImageError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ImageError("could not pull %r from any search registry: %s"
                         % (ref, "; ".join(e.line() for e in errors)), field="image")

    def push(self, ref, dest, tls_verify=True, progress=None):
        """Push stored image `ref` to the docker reference `dest`; returns the manifest digest."""
        from capsa.engine.images.registry import apply_push
        image_id, _ = self.lookup(ref)
        target = build_transport_reference(dest)
        if target["transport"] != "docker":
            raise ImageError("push destination %r is not a registry reference" % dest,
                             field="destination", hint="use save -o for archives")
        return apply_push(self, self.read_record(image_id), target, tls_verify, progress)

    def import_transport(self, ref, name=None, with_names=False):
        """Import from oci:DIR[:NAME], oci-archive:FILE[:NAME], docker-archive:FILE[:NAME] or
        dir:DIR; returns the image id, or (id, [names it was stored under]) `with_names`.
        `name` overrides the stored name. Blobs and layers that
        are stored already are neither copied nor unpacked again. On failure every blob, layer
        and partial file this import added (and no image uses) is removed: a local source has
        nothing to resume, so nothing of it is kept."""
        from capsa.engine.images.archive import build_source
        self.ensure()
        before = self._content()
        try:
            source, names = build_source(ref)
            if name:
                names = [build_store_name(name)]
            image_id = self.commit(source, names)
            return (image_id, names) if with_names else image_id
        except BaseException as exc:
            self._drop_new_content(before)
            problem = _source_problem(exc)
            if problem is None:
                raise
            raise ImageError("cannot read %s: %s" % (ref, problem), field="image",
                             hint="the file is broken or truncated; make it again") from None

    def _content(self):
        return (set(_listdir(self.path("blobs", "sha256"))), set(_listdir(self.path("layers"))),
                set(_listdir(self.path("tmp"))))

    def _drop_new_content(self, before):
        """Remove what appeared in blobs/, layers/ and tmp/ since `before` and no record needs.
        Under the exclusive gc lock no other pull or import is running, so nothing that appeared
        can be another writer's work in progress."""
        with self.lock("gc"):
            blobs, layers, tmp = self._content()
            used_blobs, used_layers = self._used_content()
            for name in blobs - before[0] - used_blobs:
                _unlink(self.path("blobs", "sha256", name))
            for name in layers - before[1] - used_layers:
                _remove_tree(self.path("layers", name))
            mine = "-%d-" % os.getpid()
            for name in tmp - before[2]:
                if name.endswith(".partial") or mine in name:
                    _remove_tree(self.path("tmp", name))

    def load(self, path):
        """`docker load`: a docker-archive or oci-archive file, names from the archive."""
        from capsa.engine.images.archive import read_archive_kind
        return self.import_transport(read_archive_kind(path) + ":" + path)

    def import_rootfs(self, path_or_tar, name, changes=None):
        """Store a root filesystem folder or tarball (.tar, .gz, .xz, .zst, .bz2) as a one-layer
        image named `name`; `changes` is an optional dict of config keys (Cmd, Env…)."""
        from capsa.engine.images.archive import apply_import_rootfs
        return apply_import_rootfs(self, path_or_tar, build_store_name(name), changes)

    def save(self, refs, path, format="docker-archive"):
        """Write the images `refs` to `path` as a docker-archive or oci-archive tar."""
        from capsa.engine.images.archive import apply_save
        if isinstance(refs, str):
            refs = [refs]
        return apply_save(self, refs, path, format)


def _parse_json(raw, what):
    try:
        doc = jsonlite.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError("%s is not valid JSON (%s)" % (what, exc), field="manifest",
                         hint="the image is broken") from None
    if not isinstance(doc, dict):
        raise ImageError("%s is not a JSON object" % what, field="manifest", hint="the image is broken")
    return doc


def _check_bytes(raw, digest):
    actual = "sha256:" + _sha256(raw).hexdigest()
    if actual != digest:
        raise ImageError("digest mismatch: expected %s, got %s" % (digest, actual), field="digest",
                         hint="the source is corrupt or was tampered with; nothing was stored")


def _source_problem(exc):
    """One line for a read error of a local image source that is not an ImageError yet (a tar
    member cut short, a file vanishing mid-read), else None."""
    if isinstance(exc, (OSError, EOFError)):
        return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
    import tarfile
    if isinstance(exc, tarfile.TarError):
        from capsa.engine.images.layer import one_line
        return one_line(exc)
    return None


def _listdir(path):
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _unlink(path):
    try:
        size = os.lstat(path).st_size
        os.unlink(path)
        return size
    except FileNotFoundError:
        return 0


def _remove_tree(path):
    """Remove a file or folder tree without following symlinks; returns bytes freed (approx.)."""
    from capsa.engine.store import apply_remove_tree
    return apply_remove_tree(path)
