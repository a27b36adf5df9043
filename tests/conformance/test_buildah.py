"""buildah 1.28 `build` running a Containerfile's RUN steps through an OCI runtime (--runtime PATH).

buildah calls the runtime without conmon: create, start, state, delete, bundle in $TMPDIR.
The image it commits is read back through `buildah mount`, which uses no runtime.
"""
import os

import pytest

from tests.conformance.clients import IMAGE, unique

pytestmark = pytest.mark.conformance
CONTAINERFILE = """FROM %s
RUN echo "OUT:uid=$(id -u) cwd=$(pwd) pid=$$" && echo built > /built.txt
RUN echo second >> /built.txt && echo "OUT:lines=$(wc -l < /built.txt)"
RUN echo "OUT:path=$PATH caps=$(grep CapEff /proc/self/status | cut -f2)"
ENV GREETING=hello
WORKDIR /work
RUN echo "OUT:greeting=$GREETING cwd=$(pwd)" > note && cat note
CMD ["cat", "/built.txt"]
""" % IMAGE


def read_image_file(bd, image, *paths):
    """The content of paths in image, through a buildah working container's mount."""
    working = bd.out("from", "--pull-never", image)
    try:
        top = bd.out("mount", working)
        contents = []
        for path in paths:
            with open(os.path.join(top, path.lstrip("/"))) as f:
                contents.append(f.read())
        return contents
    finally:
        bd("umount", working)
        bd("rm", working)


def build(runtime, bd, runtimes, tmp):
    context = os.path.join(tmp, runtime)
    os.makedirs(context)
    with open(os.path.join(context, "Containerfile"), "w") as f:
        f.write(CONTAINERFILE)
    with open(os.path.join(context, "Failing"), "w") as f:
        f.write("FROM %s\nRUN echo OUT:before\nRUN exit 3\n" % IMAGE)
    tag = "localhost/" + unique("built")
    done = bd("build", "--runtime", runtimes[runtime], "--network", "none", "--pull-never",
              "-t", tag, context)
    try:
        files = read_image_file(bd, tag, "/built.txt", "/work/note")
    finally:
        bd("rmi", tag)
    failing = bd("build", "--runtime", runtimes[runtime], "--network", "none", "--pull-never",
                 "-f", os.path.join(context, "Failing"), context, check=False)
    return {"out": [line for line in done.stdout.splitlines() if line.startswith("OUT:")],
            "files": files,
            "failing": [failing.returncode, "OUT:before" in failing.stdout,
                        "exit status 3" in failing.stderr]}


@pytest.mark.claimed("capsa-runtime")
def test_buildah_build(observe, buildah, runtimes, tmp_path):
    """RUN steps see the image and earlier steps' files, ENV and WORKDIR; a failing RUN fails
    the build with the step's exit status."""
    seen = observe(build, buildah, runtimes, str(tmp_path))
    out = seen.pop("out")
    assert out[:2] == ["OUT:uid=0 cwd=/ pid=1", "OUT:lines=2"]
    assert out[2].startswith("OUT:path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:"
                             "/bin caps=00000000")
    assert out[3:] == ["OUT:greeting=hello cwd=/work"]
    assert seen == {"files": ["built\nsecond\n", "OUT:greeting=hello cwd=/work\n"],
                    "failing": [3, True, True]}
