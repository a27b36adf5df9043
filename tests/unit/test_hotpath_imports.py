"""capsa-runtime's hot-path commands import no heavy module (start-up time is the product).

Runs each command the way the /usr/local/bin launcher does (python3 -IS) under -X importtime,
against an empty private --root, and reads the list of every module that was imported.
"""
import os
import sys

import pytest
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
HOT = ("state", "start", "kill", "delete")
# measured on this machine: argparse 13 ms, typing 15 ms, dataclasses 20 ms; logging, subprocess,
# asyncio, inspect and importlib.metadata cost as much again; re pulls enum and sre_*.
HEAVY = ("argparse", "typing", "dataclasses", "logging", "subprocess", "asyncio", "re",
         "inspect", "importlib.metadata", "traceback", "threading", "tempfile", "shutil")
LAUNCH = ("import sys; sys.path.insert(0, sys.argv[1]); sys.argv = ['capsa-runtime'] + sys.argv[2:]; "
          "from capsa.runtime.cli import main; sys.exit(main())")


def _imports(tmp_path, *argv):
    proc = subprocess.run([PYTHON, "-I", "-S", "-X", "importtime", "-c", LAUNCH, REPO,
                           "--root", str(tmp_path / "root")] + list(argv),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    modules = set()
    other = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                modules.add(name)
        else:
            other.append(line)
    return proc.returncode, modules, "\n".join(other), proc.stdout


@pytest.mark.parametrize("command", HOT)
def test_help_of_hot_commands_imports_nothing_heavy(tmp_path, command):
    status, modules, errors, out = _imports(tmp_path, command, "--help")
    assert status == 0, errors
    assert command in out
    assert "capsa.runtime.cli" in modules
    assert sorted(modules.intersection(HEAVY)) == []


@pytest.mark.parametrize("command", HOT)
def test_hot_commands_import_nothing_heavy(tmp_path, command):
    status, modules, errors, _ = _imports(tmp_path, command, "no-such-container")
    # the command really ran: its module loaded, and it refused cleanly (no container)
    assert "capsa.runtime.commands." + command in modules
    assert status != 0
    assert "Traceback" not in errors
    assert "no-such-container" in errors or "does not exist" in errors
    assert sorted(modules.intersection(HEAVY)) == []
