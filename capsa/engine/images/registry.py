"""A client of the OCI distribution API: token and basic authentication, manifests, blobs with
resume, redirects, plain HTTP for insecure registries, and push. Engine side: http.client and
ssl are imported lazily; must not import capsa.runtime.
"""
import json
import os

from capsa.errors import ImageError
from capsa.engine.images import manifest as mf
from capsa.engine.images.reference import build_name, build_registry_host

_TIMEOUT = 30


def build_challenge(header):
    """Parse a WWW-Authenticate header: ("bearer"|"basic", {param: value})."""
    scheme, _, rest = (header or "").strip().partition(" ")
    params, i = {}, 0
    while i < len(rest):
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip(" ,")
        i = eq + 1
        if i < len(rest) and rest[i] == '"':
            end = rest.find('"', i + 1)
            end = len(rest) if end < 0 else end
            params[key] = rest[i + 1:end]
            i = end + 1
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
        i = rest.find(",", i) + 1 if rest.find(",", i) >= 0 else len(rest)
    return scheme.lower(), params


class RegistryClient:
    """Requests to one registry for one repository, with auth and scheme worked out once."""

    def __init__(self, store, registry, repository, tls_verify=True, push=False):
        self.store = store
        self.registry = registry
        self.host = build_registry_host(registry)
        self.repository = repository
        insecure = store.registries()["insecure"]
        self.insecure = (not tls_verify) or insecure.get(registry, False) or \
            insecure.get(self.host, False)
        self.schemes = ["https", "http"] if self.insecure else ["https"]
        self.scope = "repository:%s:%s" % (repository, "pull,push" if push else "pull")
        self.auth = None

    def _connect(self, scheme, host):
        import http.client
        if scheme == "http":
            return http.client.HTTPConnection(host, timeout=_TIMEOUT)
        import ssl
        ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(host, timeout=_TIMEOUT, context=ctx)

    def _send(self, method, url_or_path, headers, body):
        """One request, following redirects; returns (connection, response) with body unread."""
        import ssl
        from urllib.parse import urlsplit
        headers = dict(headers)
        target = url_or_path
        for _ in range(6):
            if target.startswith("http://") or target.startswith("https://"):
                parts = urlsplit(target)
                schemes, host = [parts.scheme], parts.netloc
                path = parts.path + ("?" + parts.query if parts.query else "")
            else:
                schemes, host, path = self.schemes, self.host, target
            last = None
            for scheme in schemes:
                conn = self._connect(scheme, host)
                try:
                    conn.request(method, path, body=body() if callable(body) else body,
                                 headers=headers)
                    resp = conn.getresponse()
                except (ssl.SSLError, ConnectionError, OSError) as exc:
                    conn.close()
                    last = exc
                    continue
                if host == self.host and self.schemes != [scheme]:
                    self.schemes = [scheme]
                break
            else:
                hint = "check the address and that it is running" + \
                    ("" if self.insecure else "; for plain HTTP or a self-signed certificate use "
                     "--tls-verify=false or mark it insecure in registries.conf")
                raise ImageError("cannot reach registry %s (%s)" % (host, getattr(last, "strerror",
                                 None) or last), field="registry", hint=hint)
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                location = resp.getheader("Location")
                resp.read()
                conn.close()
                if location.startswith("/"):
                    location = "%s://%s%s" % (schemes[0] if len(schemes) == 1 else self.schemes[0],
                                              host, location)
                if urlsplit(location).netloc != self.host:
                    headers.pop("Authorization", None)
                if resp.status == 303:
                    method, body = "GET", None
                target = location
                continue
            return conn, resp
        raise ImageError("registry %s redirects too often" % self.host, field="registry")

    def request(self, method, path, headers=None, body=None, ok=(200,)):
        """A request with authentication: on 401, answer the challenge once and retry."""
        headers = dict(headers or {})
        for attempt in range(2):
            if self.auth:
                headers["Authorization"] = self.auth
            conn, resp = self._send(method, path, headers, body)
            if resp.status == 401 and attempt == 0:
                challenge = resp.getheader("WWW-Authenticate")
                resp.read()
                conn.close()
                self._authenticate(challenge)
                continue
            if resp.status not in ok:
                detail = _error_detail(resp)
                conn.close()
                raise self._status_error(method, path, resp.status, detail)
            return conn, resp
        raise ImageError("registry %s refused the credentials for %s" % (self.host, self.repository),
                         field="auth.json", hint="check the user and password in auth.json")

    def _status_error(self, method, path, status, detail):
        what = "%s %s on %s: HTTP %d%s" % (method, path, self.host, status,
                                           " (%s)" % detail if detail else "")
        if status == 404:
            return ImageError("not found: " + what, field="image",
                              hint="check the repository name and tag")
        if status in (401, 403):
            return ImageError("access denied: " + what, field="auth.json",
                              hint="add credentials for %s to auth.json" % self.registry)
        return ImageError("registry error: " + what, field="registry")

    def _authenticate(self, challenge):
        import base64
        from capsa.engine.images.config import read_auth
        scheme, params = build_challenge(challenge)
        creds = read_auth(self.store.root, self.registry, self.store.auth_file)
        basic = None
        if creds:
            basic = "Basic " + base64.b64encode(("%s:%s" % creds).encode()).decode()
        if scheme == "basic":
            if not basic:
                raise ImageError("registry %s wants a user and password" % self.host,
                                 field="auth.json", hint="add them to auth.json")
            self.auth = basic
            return
        if scheme != "bearer" or not params.get("realm"):
            raise ImageError("registry %s asks for unsupported authentication %r"
                             % (self.host, challenge), field="registry")
        from urllib.parse import urlencode
        query = {"scope": self.scope}
        if params.get("service"):
            query["service"] = params["service"]
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urlencode(query)
        headers = {"Authorization": basic} if basic else {}
        conn, resp = self._send("GET", url, headers, None)
        try:
            if resp.status != 200:
                raise ImageError("token server %s answered HTTP %d" % (params["realm"], resp.status),
                                 field="auth.json", hint="check the credentials in auth.json")
            answer = json.loads(resp.read(1 << 20))
        except ValueError:
            raise ImageError("token server %s sent no JSON" % params["realm"], field="registry") \
                from None
        finally:
            conn.close()
        token = answer.get("token") or answer.get("access_token")
        if not token:
            raise ImageError("token server %s sent no token" % params["realm"], field="registry")
        self.auth = "Bearer " + token


def _error_detail(resp):
    try:
        data = json.loads(resp.read(65536) or b"{}")
        errors = data.get("errors") or []
        return "; ".join("%s: %s" % (e.get("code"), e.get("message")) for e in errors)
    except (ValueError, AttributeError, OSError):
        return ""


class RegistrySource:
    """The image at docker reference `ref` (parsed dict), as a store source."""

    parallel = True

    def __init__(self, store, ref, tls_verify=True):
        self.store = store
        self.ref = ref
        self.client = RegistryClient(store, ref["registry"], ref["repository"], tls_verify)

    def describe(self):
        return "docker://" + build_name(self.ref)

    def read_manifest(self, digest=None):
        reference = digest or self.ref.get("digest") or self.ref["tag"]
        conn, resp = self.client.request("GET", "/v2/%s/manifests/%s" % (self.ref["repository"],
                                                                          reference),
                                         {"Accept": mf.ACCEPT})
        try:
            raw = resp.read(8 << 20)
        finally:
            conn.close()
        if self.ref.get("digest") and digest is None:
            from capsa.engine.images.store import _check_bytes
            _check_bytes(raw, self.ref["digest"])
        kind = (resp.getheader("Content-Type") or "").split(";")[0].strip() or None
        return raw, kind

    def fetch_blob(self, digest, size, dest, progress=None):
        """Download into `dest`, resuming a partial file from an earlier interrupted run."""
        import http.client
        from capsa.engine.images.layer import apply_copy_stream
        have = os.path.getsize(dest) if os.path.exists(dest) else 0
        if size is not None and have > size:
            os.unlink(dest)
            have = 0
        if size is not None and have == size and have > 0:
            return
        headers = {"Range": "bytes=%d-" % have} if have else {}
        conn, resp = self.client.request("GET", "/v2/%s/blobs/%s" % (self.ref["repository"], digest),
                                         headers, ok=(200, 206))
        try:
            mode = "ab" if resp.status == 206 else "wb"
            done = have if resp.status == 206 else 0
            host = self.client.host

            def read(n):
                try:
                    return resp.read(n)
                except (OSError, ValueError, http.client.HTTPException) as exc:
                    raise ImageError("download of %s from %s broke off (%s)" % (digest, host, exc),
                                     field="registry", hint="pull again: the download resumes") \
                        from None
            with open(dest, mode) as out:
                done = apply_copy_stream(read, out, progress, digest, size, done)
            # http.client returns a short body without error when the peer closes early
            if size is not None and done < size:
                raise ImageError("download of %s from %s broke off at %d of %d bytes"
                                 % (digest, self.client.host, done, size), field="registry",
                                 hint="pull again: the download resumes")
        finally:
            conn.close()


def apply_push(store, record, target, tls_verify=True, progress=None):
    """Upload the blobs of `record` that the registry lacks, then its manifest under the tag."""
    import hashlib
    from capsa.engine.images.layer import read_compression
    client = RegistryClient(store, target["registry"], target["repository"], tls_verify, push=True)
    repo = target["repository"]
    if record.get("manifest_media_type") in mf.MANIFESTS and store.has_blob(record["manifest_digest"]):
        with open(store.blob_path(record["manifest_digest"]), "rb") as f:
            body = f.read()
        media_type = record["manifest_media_type"]
    else:
        comps = [read_compression(store.blob_path(l["digest"])) for l in record["layers"]]
        body = json.dumps(mf.build_oci_manifest(record, comps), sort_keys=True).encode()
        media_type = mf.OCI_MANIFEST
    manifest_digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if target.get("digest") and target["digest"] != manifest_digest:
        raise ImageError("push destination names digest %s but the image's manifest is %s"
                         % (target["digest"], manifest_digest), field="destination",
                         hint="push to a tag, or leave the digest out")
    for digest in [l["digest"] for l in record["layers"]] + [record["config_digest"]]:
        conn, resp = client.request("HEAD", "/v2/%s/blobs/%s" % (repo, digest), ok=(200, 404))
        resp.read()
        conn.close()
        if resp.status == 200:
            continue
        conn, resp = client.request("POST", "/v2/%s/blobs/uploads/" % repo, ok=(202,))
        location = resp.getheader("Location")
        resp.read()
        conn.close()
        if not location:
            raise ImageError("registry %s gave no upload location" % client.host, field="registry")
        path = store.blob_path(digest)
        size = os.path.getsize(path)
        sep = "&" if "?" in location else "?"
        conn, resp = client.request("PUT", location + sep + "digest=" + digest,
                                    {"Content-Type": "application/octet-stream",
                                     "Content-Length": str(size)},
                                    lambda: open(path, "rb"), ok=(201,))
        resp.read()
        conn.close()
        if progress:
            progress(digest, size, size)
    reference = target.get("tag") or manifest_digest
    conn, resp = client.request("PUT", "/v2/%s/manifests/%s" % (repo, reference),
                                {"Content-Type": media_type}, body, ok=(201,))
    resp.read()
    conn.close()
    return manifest_digest
