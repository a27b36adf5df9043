"""Manifest handling: media types, platform selection, config/layer consistency."""
import pytest

from capsa.errors import ImageError
from capsa.engine.images import manifest as mf

D = ["sha256:" + c * 64 for c in "abcdef"]


def test_platform_from_host_and_text():
    assert mf.build_platform(None, "x86_64") == {"os": "linux", "architecture": "amd64"}
    assert mf.build_platform("linux/arm/v7", "x86_64") == {"os": "linux", "architecture": "arm",
                                                           "variant": "v7"}
    with pytest.raises(ImageError):
        mf.build_platform("linux", "x86_64")


def test_select_platform_picks_matching_and_lists_others():
    index = {"manifests": [
        {"digest": D[0], "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": D[1], "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": D[2], "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}]}
    assert mf.build_select_platform(index, {"os": "linux", "architecture": "amd64"})["digest"] == D[1]
    assert mf.build_select_platform(index, {"os": "linux", "architecture": "arm",
                                            "variant": "v7"})["digest"] == D[2]
    with pytest.raises(ImageError) as err:
        mf.build_select_platform(index, {"os": "linux", "architecture": "s390x"})
    assert "linux/arm64" in err.value.line() and "linux/arm/v7" in err.value.line()


def test_media_types():
    assert mf.build_media_type({"mediaType": mf.DOCKER_LIST, "manifests": []}) == mf.DOCKER_LIST
    assert mf.build_media_type({"manifests": []}) == mf.OCI_INDEX
    assert mf.build_media_type({"config": {}, "layers": []}, mf.DOCKER_MANIFEST) == mf.DOCKER_MANIFEST
    with pytest.raises(ImageError) as err:
        mf.build_media_type({"schemaVersion": 1, "fsLayers": []})
    assert "schema 1" in err.value.line()
    with pytest.raises(ImageError):
        mf.build_media_type({"hello": 1})


def test_layers_must_match_diff_ids():
    manifest = {"config": {"digest": D[0]}, "layers": [{"digest": D[1], "size": 5}]}
    layers = mf.build_layers(manifest, {"rootfs": {"diff_ids": [D[2]]}})
    assert layers == [{"digest": D[1], "diff_id": D[2], "size": 5, "media_type": mf.OCI_LAYER}]
    with pytest.raises(ImageError) as err:
        mf.build_layers(manifest, {"rootfs": {"diff_ids": []}})
    assert err.value.field == "config.rootfs.diff_ids"
    with pytest.raises(ImageError):
        mf.build_layers({"config": {}, "layers": [{"digest": "sha256:zz"}]},
                        {"rootfs": {"diff_ids": [D[2]]}})


def test_oci_manifest_from_record_maps_compression():
    record = {"config_digest": D[0], "config_size": 10,
              "layers": [{"digest": D[1], "size": 3, "media_type": mf.DOCKER_LAYER_GZIP},
                         {"digest": D[2], "size": 4, "media_type": mf.OCI_LAYER}]}
    doc = mf.build_oci_manifest(record, ["gzip", None])
    assert [l["mediaType"] for l in doc["layers"]] == [mf.OCI_LAYER + "+gzip", mf.OCI_LAYER]
    assert doc["config"] == {"mediaType": mf.OCI_CONFIG, "digest": D[0], "size": 10}


def test_run_config_subset():
    cfg = mf.build_run_config({"config": {"Cmd": ["sh"], "Env": ["A=1"], "Hostname": "x"}})
    assert cfg["Cmd"] == ["sh"] and cfg["Env"] == ["A=1"] and "Hostname" not in cfg
    assert set(cfg) == set(mf.CONFIG_KEYS)
