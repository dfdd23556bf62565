"""How long ``recon --help`` takes: the lazy CLI (catalog warm) against the eager one and a bare
Python start, each run in a fresh interpreter, as a user would.

    python benchmarks/cli_bench.py [--repeat 5]

Prints the median wall time of each and ``uptime``'s load average (the machines are shared).
The eager variant builds the registry up front (``make_cli()``: every plugin and torch imported),
which is what ``recon --help`` did before the catalog.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass (interpreter start)": "pass",
    "recon --help (lazy, catalog warm)": "from recon_cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "recon --help (eager registry)": "from recon_cli.main import make_cli\ntry:\n    make_cli()(['--help'], prog_name='recon')\nexcept SystemExit:\n    pass",
    "recon completion of --repr (lazy)": None,  # filled in below: runs the completion protocol
}


def _time(code: str | None, env: dict[str, str]) -> float:
    if code is None:
        env = {**env, "_RECON_COMPLETE": "bash_complete", "COMP_WORDS": "recon run --repr ", "COMP_CWORD": "3"}
        code = "from recon_cli.main import main\ntry:\n    main()\nexcept SystemExit:\n    pass"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = dict(os.environ)
    _time(CASES["recon --help (lazy, catalog warm)"], env)  # writes the catalog when there is none
    for label, code in CASES.items():
        times = [_time(code, env) for _ in range(args.repeat)]
        print(f"{label:40s} median {statistics.median(times):.3f} s  (min {min(times):.3f}, max {max(times):.3f})")
    print("load average:", os.getloadavg())


if __name__ == "__main__":
    main()
