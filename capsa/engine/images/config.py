"""Host configuration the image code reads: registries.conf (search registries, insecure
registries) and Docker-style auth.json credentials.

`read_*` functions only; imports the standard library (tomllib, json, base64) lazily and errors.
"""
import os

from capsa.errors import ImageError

DEFAULT_SEARCH = ["docker.io"]


def _first_existing(paths):
    for path in paths:
        if path and os.path.isfile(path):
            return path
    return None


def read_registries_conf(store_root, path=None):
    """Return {"search": [registry...], "insecure": {location: bool}} from the first of:
    `path`, $CAPSA_REGISTRIES_CONF, <store_root>/registries.conf, /etc/containers/registries.conf.

    Only the v2 TOML keys capsa uses are read: unqualified-search-registries and
    [[registry]] location/insecure.
    """
    path = _first_existing([path, os.environ.get("CAPSA_REGISTRIES_CONF"),
                            os.path.join(store_root, "registries.conf"),
                            "/etc/containers/registries.conf"])
    conf = {"search": list(DEFAULT_SEARCH), "insecure": {}, "path": path}
    if path is None:
        return conf
    import tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImageError("cannot read registries configuration %s: %s" % (path, exc),
                         field="registries.conf", hint="fix the TOML or remove the file") from None
    search = data.get("unqualified-search-registries")
    if search is not None:
        if not isinstance(search, list) or not all(isinstance(s, str) for s in search):
            raise ImageError("%s: unqualified-search-registries must be a list of strings" % path,
                             field="unqualified-search-registries")
        conf["search"] = search or list(DEFAULT_SEARCH)
    for entry in data.get("registry", []) or []:
        location = entry.get("location") or entry.get("prefix")
        if isinstance(location, str):
            conf["insecure"][location] = bool(entry.get("insecure", False))
    return conf


def read_auth(store_root, registry, path=None):
    """Return (user, password) for `registry` from a Docker-style auth.json, or None.

    Looked up in `path`, $REGISTRY_AUTH_FILE, <store_root>/auth.json,
    $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json (first file that exists).
    """
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    path = _first_existing([path, os.environ.get("REGISTRY_AUTH_FILE"),
                            os.path.join(store_root, "auth.json"),
                            runtime_dir and os.path.join(runtime_dir, "containers", "auth.json"),
                            os.path.expanduser("~/.docker/config.json")])
    if path is None:
        return None
    import base64
    import json
    try:
        with open(path, "rb") as f:
            auths = json.load(f).get("auths", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise ImageError("cannot read credentials file %s: %s" % (path, exc), field="auth.json",
                         hint='expected {"auths": {"REGISTRY": {"auth": "BASE64(user:password)"}}}') \
            from None
    keys = [registry, "https://" + registry, "http://" + registry]
    if registry in ("docker.io", "registry-1.docker.io"):
        keys += ["docker.io", "https://index.docker.io/v1/", "index.docker.io"]
    for key in keys:
        entry = auths.get(key)
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise ImageError("%s: the auth entry of %s is not base64(user:password)"
                                 % (path, key), field="auth.json")
            return user, password
    return None
