"""Benchmarks of the image store (run as root from the repository root: python3 bench/images.py).

unpack: capsa import of an OCI layout (copy blobs, verify, unpack in overlay form) against
`umoci unpack` of the same layout; pull: capsa pull against `skopeo copy docker:// oci:` from the
same local docker-registry. Prints the times and the ratios (capsa / reference; < 1 is faster).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from capsa.engine.images.store import ImageStore  # noqa: E402
from tests.integration.test_images_support import Registry, run  # noqa: E402

TREES = ["/usr/lib/python3", "/usr/share/perl"]


def best_of(n, fn):
    times = []
    for _ in range(n):
        times.append(fn())
    return min(times)


def build_layout(work):
    """An OCI layout with one gzip layer per tree in TREES (umoci repack from a bundle)."""
    layout = os.path.join(work, "layout")
    bundle = os.path.join(work, "bundle")
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", layout + ":latest")
    for tree in TREES:
        run("umoci", "unpack", "--image", layout + ":latest", bundle)
        dest = os.path.join(bundle, "rootfs", tree.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        run("cp", "-a", tree, dest)
        run("umoci", "repack", "--image", layout + ":latest", bundle)
        shutil.rmtree(bundle)
    out = subprocess.run(["du", "-sbc"] + TREES, stdout=subprocess.PIPE, text=True).stdout
    return layout, int(out.splitlines()[-1].split()[0])


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    rounds = int(os.environ.get("ROUNDS", "3"))
    work = tempfile.mkdtemp(prefix="capsa-bench-images-")
    try:
        layout, size = build_layout(work)
        mb = size / 1e6

        def umoci():
            target = os.path.join(work, "umoci-bundle")
            shutil.rmtree(target, ignore_errors=True)
            return timed(lambda: run("umoci", "unpack", "--image", layout + ":latest", target))

        def capsa_import():
            root = os.path.join(work, "store-import")
            shutil.rmtree(root, ignore_errors=True)
            return timed(lambda: ImageStore(root).import_transport("oci:%s:latest" % layout))

        t_umoci, t_capsa = best_of(rounds, umoci), best_of(rounds, capsa_import)
        print("unpack %.0f MB: umoci unpack %.2f s (%.0f MB/s), capsa import %.2f s (%.0f MB/s), "
              "ratio capsa/umoci %.2f" % (mb, t_umoci, mb / t_umoci, t_capsa, mb / t_capsa,
                                          t_capsa / t_umoci))
        reg = Registry(work)
        try:
            reg.skopeo_copy("oci:%s:latest" % layout, "bench:v1")

            def skopeo():
                dest = os.path.join(work, "skopeo-oci")
                shutil.rmtree(dest, ignore_errors=True)
                return timed(lambda: run("skopeo", "copy", "--src-tls-verify=false",
                                         "docker://%s/bench:v1" % reg.addr, "oci:%s:v1" % dest))

            def capsa_pull():
                root = os.path.join(work, "store-pull")
                shutil.rmtree(root, ignore_errors=True)
                return timed(lambda: ImageStore(root).pull("%s/bench:v1" % reg.addr,
                                                           tls_verify=False))

            t_skopeo, t_pull = best_of(rounds, skopeo), best_of(rounds, capsa_pull)
            print("pull: skopeo copy (download only) %.2f s, capsa pull (download + unpack) %.2f s, "
                  "ratio capsa/skopeo %.2f; against skopeo copy + umoci unpack %.2f s: ratio %.2f"
                  % (t_skopeo, t_pull, t_pull / t_skopeo, t_skopeo + t_umoci,
                     t_pull / (t_skopeo + t_umoci)))
        finally:
            reg.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
