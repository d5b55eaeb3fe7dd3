"""Runs a command, writing its stdout to a file, and prints one JSON line: wall seconds and the
peak RSS of the command's process tree (largest child's ru_maxrss, as GNU time reports it).

    measure.py STDOUT_FILE STDERR_FILE -- COMMAND...
"""

import json
import resource
import subprocess
import sys
import time

out_path, err_path, sep, *cmd = sys.argv[1:]
assert sep == "--", "usage: measure.py STDOUT STDERR -- COMMAND..."
started = time.perf_counter()
with open(out_path, "w") as out, open(err_path, "w") as err:
    code = subprocess.run(cmd, stdout=out, stderr=err).returncode
wall = time.perf_counter() - started
rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"exit": code, "wall": wall, "peak_rss_mib": rss_kib / 1024}))
sys.exit(code)
