#!/usr/bin/env bash
# Durable-ingest benchmark of the worker (benches/worker_ingest.rs): acknowledgements per second at
# 32 concurrent senders and p99 latency at a paced 1,000 notifications/s, on SQLite and (when a
# server answers on 127.0.0.1:5432, or PUSHGATE_TEST_POSTGRES_URL) PostgreSQL. Loopback only.
# Prints the machine's context first: the figures depend on the disk's fsync latency and on what
# else the cores are doing. Extra arguments go to the bench (e.g. a criterion filter: `sqlite`).
#   PUSHGATE_BENCH_PACED_SECS   length of the paced run (default 10, at most 120)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== machine"
echo "cores: $(nproc)  memory: $(free -h | awk '/^Mem:/ {print $2}')  load: $(cut -d' ' -f1-3 /proc/loadavg)"
if command -v python3 >/dev/null; then
    python3 - "${CARGO_TARGET_DIR:-target}" <<'PY'
import os, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
samples = []
for i in range(200):
    os.pwrite(fd, b"x" * 8192, (i % 64) * 8192)
    started = time.perf_counter()
    os.fdatasync(fd)
    samples.append(time.perf_counter() - started)
os.close(fd)
os.unlink(path)
samples.sort()
print("fdatasync of 8 KiB: p50 %.2f ms, p99 %.2f ms" % (samples[100] * 1e3, samples[197] * 1e3))
PY
fi

echo "== bench"
cargo bench --bench worker_ingest -- "$@"
