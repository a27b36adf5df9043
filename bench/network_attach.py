"""One capsa network attach + detach in a fresh process, for hyperfine (bench/network.sh).

usage: python3 bench/network_attach.py STATE_ROOT MODE   (MODE: none or bridge)
The default network lives in STATE_ROOT (10.89.249.0/24); the bridge stays up between runs,
as it does between containers.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from capsa.engine.network.manager import NetworkManager  # noqa: E402

manager = NetworkManager(sys.argv[1], default_subnet="10.89.249.0/24")
cid = "bench%d" % os.getpid()
manager.attach(cid, cid, sys.argv[2], {})
manager.detach(cid)
