#!/usr/bin/env bash
# Process F under load (benches/sync_latency.rs): an Outlook-side change in the simulated Exchange
# until the reservation is updated in the worker's database, at a paced 100 changes/s spread over
# 1,000 mailboxes with 20 ms of EWS latency, through the real gateway and worker, on SQLite and
# (when a server answers on 127.0.0.1:5432, or PUSHGATE_TEST_POSTGRES_URL) PostgreSQL. Loopback
# only, every run bounded. Prints the machine's context first and writes the table with machine
# and commit to bench/results/sync-<stamp>.md.
#   PUSHGATE_BENCH_SYNC_SECS      length of the paced run (default 30, at most 120)
#   PUSHGATE_BENCH_SYNC_BACKENDS  sqlite,postgres (default) or one of them
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${PUSHGATE_BENCH_SYNC_SECS:-30}
case "$SECS" in '' | *[!0-9]*) echo "PUSHGATE_BENCH_SYNC_SECS must be a number" >&2; exit 2 ;; esac
if [ "$SECS" -gt 120 ]; then
    echo "runs are bounded: PUSHGATE_BENCH_SYNC_SECS at most 120" >&2
    exit 2
fi
export PUSHGATE_BENCH_SYNC_SECS=$SECS

echo "building (release) ..." >&2
cargo bench --bench sync_latency --no-run --quiet

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
OUT="bench/results/sync-$STAMP.md"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
MACHINE="$(nproc) cores ($CPU_MODEL), $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -sr)"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

{
    echo "# Process F end to end: Outlook change to reservation updated"
    echo
    echo "- machine: $MACHINE"
    echo "- load average before the run: $LOAD_BEFORE"
    echo "- commit: $COMMIT"
    echo "- $(rustc --version)"
    echo "- simulator, gateway, worker and the watcher share the same cores; PostgreSQL runs on them too"
    echo
} > "$OUT"
echo "== machine"
cat "$OUT"

echo "== bench"
PUSHGATE_BENCH_REPORT="$PWD/$OUT" cargo bench --bench sync_latency --quiet
{
    echo
    echo "- load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
} >> "$OUT"
echo "written to $OUT"
