"""Image references and transports, as skopeo and podman spell them: parsing only, no I/O.

Owns docker reference normalisation (default registry, Docker Hub's `library/` rule, tag/digest),
the transport prefixes oci:, oci-archive:, docker-archive:, dir:, docker://, and how `run` reads
its IMAGE argument. Pure; imports nothing from the rest of capsa except errors.
"""
from capsa.errors import ImageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"
TRANSPORTS = ("docker", "oci", "oci-archive", "docker-archive", "dir")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-/")
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_HEX = frozenset("0123456789abcdef")


def _bad(text, why, hint="write [REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]"):
    return ImageError("bad image reference %r: %s" % (text, why), field="reference", hint=hint)


def check_digest(digest, what="digest"):
    """Return `digest` if it is sha256:<64 lowercase hex>, else raise ImageError."""
    algo, _, hexpart = str(digest).partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not set(hexpart) <= _HEX:
        raise ImageError("%s %r is not sha256:<64 hex digits>" % (what, digest), field=what,
                         hint="only sha256 digests are supported")
    return digest


def _is_domain(part):
    return "." in part or ":" in part or part == "localhost" or part != part.lower()


def build_docker_reference(text, default_registry=DOCKER_HUB):
    """Parse `[registry/]repo[:tag][@digest]` into a dict.

    Returns {"registry", "repository", "tag", "digest", "qualified"}: `qualified` is False when
    the text named no registry (the caller may then try its search registries in order).
    """
    if not text or len(text) > 255 or text.strip() != text:
        raise _bad(text, "empty, too long or has spaces")
    rest, digest = text, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        check_digest(digest, "reference digest")
    first, slash, remainder = rest.partition("/")
    qualified = bool(slash) and _is_domain(first)
    if qualified:
        registry, path = first, remainder
    else:
        registry, path = default_registry, rest
    tag = None
    name, colon, maybe_tag = path.rpartition(":")
    if colon and "/" not in maybe_tag:
        path, tag = name, maybe_tag
        if not tag or len(tag) > 128 or not set(tag) <= _TAG_CHARS or tag[0] in ".-":
            raise _bad(text, "tag %r is not [A-Za-z0-9_.-]{1,128}" % tag)
    if not path or not set(path) <= _NAME_CHARS or path[0] in "._-/" or path[-1] in "._-/" \
            or "//" in path:
        raise _bad(text, "repository %r must be lowercase letters, digits and . _ - /" % path)
    if registry == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    if tag is None and digest is None:
        tag = "latest"
    return {"registry": registry, "repository": path, "tag": tag, "digest": digest,
            "qualified": qualified}


def build_name(ref):
    """The canonical `registry/repo:tag` (or `@digest`) string of a parsed docker reference."""
    text = ref["registry"] + "/" + ref["repository"]
    if ref.get("tag"):
        text += ":" + ref["tag"]
    if ref.get("digest"):
        text += "@" + ref["digest"]
    return text


def build_registry_host(registry):
    """The host to talk HTTP to for a registry name (docker.io is served by registry-1)."""
    return DOCKER_HUB_HOST if registry == DOCKER_HUB else registry


def build_transport_reference(text):
    """Split `transport:rest` as skopeo does. Returns {"transport", "path", "name"} for the file
    transports (name may be None), or {"transport": "docker", ...docker reference} for docker://.

    A text with no known transport prefix is a docker reference (transport "docker").
    """
    if not text:
        raise _bad(text, "empty")
    if text.startswith("docker://"):
        ref = build_docker_reference(text[len("docker://"):])
        ref["transport"] = "docker"
        return ref
    transport, colon, rest = text.partition(":")
    if colon and transport in TRANSPORTS and transport != "docker":
        # skopeo splits PATH:REFERENCE at the first colon: paths with colons are not supported.
        path, _, name = rest.partition(":")
        if not path:
            raise _bad(text, "no path after %s:" % transport, hint="write %s:PATH[:NAME]" % transport)
        if transport == "dir" and name:
            raise _bad(text, "dir: takes no name", hint="write dir:PATH")
        return {"transport": transport, "path": path, "name": name or None}
    ref = build_docker_reference(text)
    ref["transport"] = "docker"
    return ref


FILE_TRANSPORTS = ("oci", "oci-archive", "docker-archive", "dir")


def build_run_image(text):
    """How `run`/`create` (and a declared `image=`) obtain IMAGE, as podman does. Returns
    {"kind": "file", "transport", "path", "name"} for oci:, oci-archive:, docker-archive:, dir:
    (read into the store on every run); {"kind": "registry", ...docker reference} for
    docker://REF; {"kind": "stored"} for a name or id looked up in the store first.

    A bare path is refused: folders, tarballs and disks are given with --rootfs, and an
    image name never starts with / or . (the precedence apply_container_rootfs relies on)."""
    if not text:
        raise _bad(text, "empty", hint="name an image, or give a folder with --rootfs")
    if text[0] in "/.~":
        raise ImageError("%r is a path, not an image" % text, field="image",
                         hint="use --rootfs %s for a folder, tarball or disk; oci:%s, "
                              "oci-archive:%s or docker-archive:%s for an image"
                              % (text, text, text, text))
    transport, colon, _ = text.partition(":")
    if text.startswith("docker://"):
        ref = build_transport_reference(text)
        ref["kind"] = "registry"
        return ref
    if colon and transport in FILE_TRANSPORTS:
        ref = build_transport_reference(text)
        ref["kind"] = "file"
        return ref
    return {"kind": "stored"}
