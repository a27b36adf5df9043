"""Image manifests, indexes and configs: media types, platform selection, and building an OCI
manifest from a stored image. Pure functions over parsed JSON; no I/O, imports only errors.
"""
from capsa.errors import ImageError
from capsa.engine.images.reference import check_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
CONFIG_KEYS = ("Entrypoint", "Cmd", "Env", "WorkingDir", "User", "StopSignal", "Volumes",
               "ExposedPorts", "Labels")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def build_host_platform(machine):
    """{"os", "architecture"} for `platform.machine()` in OCI/Go naming."""
    return {"os": "linux", "architecture": _ARCH.get(machine, machine)}


def build_platform(text, machine):
    """Parse `os/arch[/variant]` (or None for the host) into a platform dict."""
    if not text:
        return build_host_platform(machine)
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError("bad platform %r" % text, field="platform", hint="write OS/ARCH[/VARIANT]")
    found = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        found["variant"] = parts[2]
    return found


def build_media_type(doc, declared=None):
    """The media type of a parsed manifest or index: its own field, the HTTP one, or a guess."""
    kind = doc.get("mediaType") or declared
    if kind in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise ImageError("the image uses the Docker schema 1 manifest, which capsa does not read",
                         field="manifest", hint="convert it with `skopeo copy --format v2s2`")
    if kind in MANIFESTS or kind in INDEXES:
        return kind
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc and "config" in doc:
        return OCI_MANIFEST
    raise ImageError("unknown manifest media type %r" % kind, field="manifest",
                     hint="capsa reads OCI and Docker schema 2 manifests and indexes")


def build_select_platform(index, want):
    """The descriptor of `index` matching platform `want`; ImageError listing what exists."""
    seen = []
    for desc in index.get("manifests", []):
        plat = desc.get("platform") or {}
        seen.append("%s/%s%s" % (plat.get("os"), plat.get("architecture"),
                                 "/" + plat["variant"] if plat.get("variant") else ""))
        if plat.get("os") == want["os"] and plat.get("architecture") == want["architecture"] \
                and (not want.get("variant") or plat.get("variant") == want["variant"]):
            return desc
    raise ImageError("no image for platform %s/%s in the index (it has: %s)"
                     % (want["os"], want["architecture"], ", ".join(seen) or "nothing"),
                     field="platform", hint="choose one of them with --platform OS/ARCH")


def build_layers(manifest, config):
    """Check a manifest against its config; return [{"digest", "diff_id", "size", "media_type"}]."""
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not isinstance(manifest.get("config"), dict):
        raise ImageError("manifest has no config or layers list", field="manifest",
                         hint="the image is broken")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise ImageError("image config lists %s diff_ids for %d layers"
                         % (len(diff_ids) if isinstance(diff_ids, list) else "no", len(layers)),
                         field="config.rootfs.diff_ids", hint="the image is broken")
    result = []
    for desc, diff_id in zip(layers, diff_ids):
        result.append({"digest": check_digest(desc.get("digest"), "layer digest"),
                       "diff_id": check_digest(diff_id, "config.rootfs.diff_ids"),
                       "size": int(desc.get("size") or 0),
                       "media_type": desc.get("mediaType") or OCI_LAYER})
    return result


def build_oci_layer_type(media_type, compression):
    """The OCI layer media type for a stored blob of the given compression (None = plain tar)."""
    if compression == "gzip":
        return OCI_LAYER + "+gzip"
    if compression == "zstd":
        return OCI_LAYER + "+zstd"
    if compression is None:
        return OCI_LAYER
    return media_type


def build_oci_manifest(record, compressions):
    """An OCI image manifest (dict) for a stored image record; compressions[i] of layer i."""
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": record["config_digest"],
                       "size": record["config_size"]},
            "layers": [{"mediaType": build_oci_layer_type(layer["media_type"], comp),
                        "digest": layer["digest"], "size": layer["size"]}
                       for layer, comp in zip(record["layers"], compressions)]}


def build_run_config(config):
    """The subset of an image config the engine applies to a container (Docker's meanings)."""
    inner = config.get("config") or {}
    return {key: inner.get(key) for key in CONFIG_KEYS}
