"""Registry pulls against FakeRegistry, a small distribution-API server on 127.0.0.1 with
Bearer token auth, Range support and a connection that can drop mid-blob: token flow with
auth.json credentials, platform selection from an index, resume, digest mismatch, unreachable."""
import base64
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading

import pytest

from capsa.errors import ImageError
from capsa.engine.images import manifest as mf
from capsa.engine.images.registry import build_challenge
from capsa.engine.images.store import ImageStore


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(text, size=0):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("etc/arch", text.encode()), ("blob", bytes(range(256)) * size)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class FakeRegistry:
    def __init__(self, user="alice", password="secret", anonymous=False):
        self.blobs, self.manifests, self.ranges, self.cut = {}, {}, [], {}
        self.anonymous = anonymous
        self.token_requests = []
        self.creds = "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?")[0]
                if path == "/token":
                    owner.token_requests.append((self.path, self.headers.get("Authorization")))
                    if not owner.anonymous and self.headers.get("Authorization") != owner.creds:
                        return self.send(401)
                    return self.send(200, json.dumps({"token": "tok"}).encode())
                if self.headers.get("Authorization") != "Bearer tok":
                    realm = "http://127.0.0.1:%d/token" % owner.port
                    return self.send(401, b"{}", [("WWW-Authenticate", 'Bearer realm="%s",'
                                                   'service="fake",scope="x"' % realm)])
                parts = path.split("/")
                if "manifests" in parts:
                    found = owner.manifests.get(parts[-1])
                    if not found:
                        return self.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                    return self.send(200, found[0], [("Content-Type", found[1])])
                if "blobs" in parts:
                    data = owner.blobs.get(parts[-1])
                    if data is None:
                        return self.send(404)
                    start = 0
                    if self.headers.get("Range"):
                        owner.ranges.append(self.headers["Range"])
                        start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    cut = owner.cut.pop(parts[-1], None)
                    self.send_response(206 if start else 200)
                    self.send_header("Content-Length", str(len(data) - start))
                    self.end_headers()
                    if cut:
                        self.wfile.write(data[start:cut])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(data[start:])
                    return
                self.send(404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add_blob(self, data):
        self.blobs[digest_of(data)] = data
        return {"digest": digest_of(data), "size": len(data)}

    def add_image(self, arch, size=0):
        layer = layer_tar(arch, size)
        config = json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["/" + arch]},
                             "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]}}).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": mf.DOCKER_MANIFEST,
                               "config": dict(self.add_blob(config), mediaType=mf.DOCKER_CONFIG),
                               "layers": [dict(self.add_blob(layer),
                                               mediaType=mf.DOCKER_LAYER_GZIP)]}).encode()
        self.manifests[digest_of(manifest)] = (manifest, mf.DOCKER_MANIFEST)
        return manifest, digest_of(layer)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry():
    reg = FakeRegistry()
    yield reg
    reg.stop()


@pytest.fixture
def store(tmp_path, registry):
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {registry.addr: {"auth": base64.b64encode(
        b"alice:secret").decode()}}}))
    return ImageStore(str(tmp_path / "store"), auth_file=str(auth))


def test_challenge_parsing():
    assert build_challenge('Bearer realm="https://a/token",service="reg",scope="repository:x:pull"') \
        == ("bearer", {"realm": "https://a/token", "service": "reg", "scope": "repository:x:pull"})
    assert build_challenge('Basic realm="r"') == ("basic", {"realm": "r"})
    assert build_challenge("") == ("", {})


def test_token_auth_and_platform_selection_from_an_index(registry, store):
    amd, _ = registry.add_image("amd64")
    arm, _ = registry.add_image("arm64")
    index = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [
        {"mediaType": mf.DOCKER_MANIFEST, "digest": digest_of(arm), "size": len(arm),
         "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": mf.DOCKER_MANIFEST, "digest": digest_of(amd), "size": len(amd),
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    registry.manifests["v1"] = (index, mf.OCI_INDEX)
    events = []
    image = store.pull(registry.addr + "/multi:v1", tls_verify=False,
                       progress=lambda d, n, t: events.append((d, n, t)))
    record = store.resolve(registry.addr + "/multi:v1")
    assert record["id"] == image and record["architecture"] == "amd64"
    assert record["config"]["Cmd"] == ["/amd64"]
    assert events and events[-1][1] == events[-1][2]
    store.platform = "linux/arm64"
    store.pull(registry.addr + "/multi:v1", tls_verify=False)
    assert store.resolve(registry.addr + "/multi:v1")["architecture"] == "arm64"
    store.platform = "linux/s390x"
    with pytest.raises(ImageError) as err:
        store.pull(registry.addr + "/multi:v1", tls_verify=False)
    assert "linux/arm64" in err.value.line()


def test_pull_by_digest_verifies_the_manifest(registry, store):
    manifest, _ = registry.add_image("amd64")
    ref = "%s/bb@%s" % (registry.addr, digest_of(manifest))
    assert store.resolve(store.pull(ref, tls_verify=False))["config"]["Cmd"] == ["/amd64"]


def test_wrong_credentials_are_one_line(registry, tmp_path):
    registry.add_image("amd64")
    auth = tmp_path / "bad.json"
    auth.write_text(json.dumps({"auths": {registry.addr: {"auth": base64.b64encode(
        b"alice:wrong").decode()}}}))
    store = ImageStore(str(tmp_path / "s2"), auth_file=str(auth))
    with pytest.raises(ImageError) as err:
        store.pull(registry.addr + "/bb:v1", tls_verify=False)
    assert err.value.field == "auth.json"


def test_interrupted_download_resumes_with_range(registry, store):
    manifest, _ = registry.add_image("amd64", size=4000)
    registry.manifests["v1"] = (manifest, mf.DOCKER_MANIFEST)
    layer = json.loads(manifest)["layers"][0]["digest"]
    registry.cut[layer] = 300000
    with pytest.raises(ImageError) as err:
        store.pull(registry.addr + "/bb:v1", tls_verify=False)
    assert "broke off" in err.value.line()
    assert store.list() == [] and not store.has_blob(layer)
    image = store.pull(registry.addr + "/bb:v1", tls_verify=False)
    assert registry.ranges == ["bytes=300000-"]
    assert store.resolve(image)["layers"][0]["digest"] == layer


def test_tampered_blob_is_refused_and_store_stays_clean(registry, store):
    manifest, _ = registry.add_image("amd64")
    registry.manifests["v1"] = (manifest, mf.DOCKER_MANIFEST)
    layer = json.loads(manifest)["layers"][0]["digest"]
    registry.blobs[layer] = registry.blobs[layer][:-1] + b"!"
    with pytest.raises(ImageError) as err:
        store.pull(registry.addr + "/bb:v1", tls_verify=False)
    assert "digest mismatch" in err.value.line()
    assert store.list() == [] and not store.has_blob(layer)


def test_missing_tag_and_unreachable_registry(registry, store):
    with pytest.raises(ImageError) as err:
        store.pull(registry.addr + "/bb:nope", tls_verify=False)
    assert err.value.line().startswith("image: not found")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ImageError) as err:
        store.pull("127.0.0.1:%d/bb:v1" % port, tls_verify=False)
    assert "cannot reach registry" in err.value.line()
    with pytest.raises(ImageError) as err:
        store.pull("127.0.0.1:%d/bb:v1" % port)
    assert "--tls-verify=false" in err.value.line()


def test_anonymous_token_with_scope_and_service(tmp_path):
    reg = FakeRegistry(anonymous=True)
    try:
        manifest, _ = reg.add_image("amd64")
        reg.manifests["v1"] = (manifest, mf.DOCKER_MANIFEST)
        store = ImageStore(str(tmp_path / "s"), auth_file=str(tmp_path / "none.json"))
        store.pull(reg.addr + "/team/bb:v1", tls_verify=False)
        path, authorization = reg.token_requests[0]
        assert authorization is None
        assert "scope=repository%3Ateam%2Fbb%3Apull" in path and "service=fake" in path
    finally:
        reg.stop()
