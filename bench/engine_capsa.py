"""The `capsa` command as the installed fast launcher runs it (python3 -I -S, repository on
sys.path), for bench/engine.sh when /usr/local/bin/capsa is not installed."""
import os
import sys

sys.path.insert(0, os.environ.get("CAPSA_BENCH_REPO") or
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from capsa.engine.cli import main  # noqa: E402

sys.exit(main())
