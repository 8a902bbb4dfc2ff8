#!/usr/bin/env bash
# pushgate's gateway next to nginx (config/nginx-equivalent.conf), in front of the same upstream
# stub, driven by the same load client (benches/gateway_load.rs), on loopback only, every run
# bounded in seconds, the two sides alternating, each round's order swapped (A B, B A, A B, ...).
#
#   scripts/bench-gateway.sh [SECONDS_PER_RUN]      (default 10; ROUNDS=5 CONCURRENCY=32 WARMUP=2)
#   GATEWAY_THREADS=N sets the gateway's serving threads (default 0: one per core)
#   PUSHGATE_BIN=PATH runs that gateway binary instead of this checkout's release build (to set
#   two builds against the same nginx: run the script once with each, one after the other)
#   MODES="keepalive ..." runs only those modes (default: all four)
# Figures are medians of the rounds, so that a round disturbed by the host (other machines share
# it) does not decide a side's figure. The verdict per mode is paired: each round sets a pushgate
# run next to an nginx run made just before or after it, and the ratio reported is the median of
# those per-round ratios, with the number of rounds pushgate won. A host's load drifts by more than
# the difference between the two sides; two runs next to each other in time share its state.
#
# Modes, with the same TLS terms on both sides:
#   full-ecdsa  a new connection per request, full handshake each (the client forgets its
#               session), ECDSA P-256 certificate
#   full-rsa    the same with an RSA-2048 certificate
#   resume-rsa  a new connection per request, session resumption allowed on both sides (RSA)
#   keepalive   pooled connections from a trusted-proxy address, as a load balancer (RSA)
# Prints requests/s, p50, p99 and server CPU seconds per 1,000 requests per side and the
# pushgate/nginx ratio per mode, measures the gateway's resident memory with 1,000 open
# connections, and writes the table with machine and commit to bench/results/.
set -euo pipefail

RUN_SECONDS=${1:-10}
ROUNDS=${ROUNDS:-5}
CONCURRENCY=${CONCURRENCY:-32}
WARMUP=${WARMUP:-2}
MODES=${MODES:-"full-ecdsa full-rsa resume-rsa keepalive"}
case "$RUN_SECONDS" in '' | *[!0-9]*) echo "SECONDS_PER_RUN must be a number" >&2; exit 2 ;; esac
if [ "$RUN_SECONDS" -gt 60 ] || [ "$ROUNDS" -gt 10 ]; then
    echo "runs are bounded: at most 60 s each and 10 rounds" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
ROOT=$(pwd)

# --- tools ----------------------------------------------------------------------------------
if ! command -v nginx >/dev/null 2>&1; then
    echo "installing nginx-light (Debian)" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light >/dev/null
fi
command -v openssl >/dev/null || { echo "openssl is needed" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed for the table" >&2; exit 2; }

echo "building (release) ..." >&2
cargo build --release --quiet --bin pushgate
LOAD=$(cargo build --release --quiet --bench gateway_load --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gateway_load" and m.get("executable"):
        print(m["executable"])')
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
PUSHGATE="${PUSHGATE_BIN:-$TARGET_DIR/release/pushgate}" # the record then names PUSHGATE_BIN
[ -x "$PUSHGATE" ] && [ -x "$LOAD" ] || { echo "no gateway ($PUSHGATE) or load client ($LOAD) to run" >&2; exit 1; }

# --- a private directory, and everything we start stopped on exit ---------------------------
DIR=$(mktemp -d /tmp/pushgate-bench.XXXXXX)
chmod 755 "$DIR"
STARTED=()
cleanup() {
    for pid in "${STARTED[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || ulimit -n 16384 2>/dev/null || true

STUB_ADDR=127.0.0.1:18480
PUSHGATE_ADDR=127.0.0.1:18443
NGINX_ADDR=127.0.0.1:28443
CLIENT=127.0.0.2        # an allowlisted source (Exchange)
BALANCER=127.0.0.5      # a trusted proxy (keep-alive mode)
TOKEN=bench-token-0123456789

# Certificates: ECDSA P-256 and RSA-2048, self-signed for 127.0.0.1 / localhost.
for kind in ecdsa rsa; do
    if [ $kind = ecdsa ]; then keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); else keyopt=(-newkey rsa:2048); fi
    openssl req -x509 "${keyopt[@]}" -nodes -days 30 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
        -keyout "$DIR/$kind.key" -out "$DIR/$kind.pem" 2>/dev/null
done
# The same allowlist on both sides: the shipped ranges file plus the benchmark's client.
{ grep -v "^# count:" ranges/exchange-online.txt; echo "$CLIENT/32"; } > "$DIR/ranges.txt"
grep -v '^#' "$DIR/ranges.txt" | grep -v '^[[:space:]]*$' | sed 's/$/ 1;/' > "$DIR/nginx-allowlist.conf"
echo "$TOKEN" > "$DIR/token"
mkdir -p "$DIR/client_body" "$DIR/proxy" "$DIR/fastcgi" "$DIR/uwsgi" "$DIR/scgi"

"$LOAD" stub "$STUB_ADDR" 2>"$DIR/stub.log" &
STARTED+=($!)

wait_port() { # host:port
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    tail -n 5 "$DIR"/pushgate.log "$DIR"/nginx-error.log "$DIR"/stub.log >&2 || true
    return 1
}
wait_port "$STUB_ADDR"

PUSHGATE_PID=""
NGINX_PID=""
start_servers() { # key kind
    local kind=$1
    cat > "$DIR/pushgate.toml" <<EOF
[gateway]
listen = "$PUSHGATE_ADDR"
metrics_listen = "127.0.0.1:19464"
tls_cert = "$DIR/$kind.pem"
tls_key = "$DIR/$kind.key"
ranges_file = "$DIR/ranges.txt"
upstream = "http://$STUB_ADDR"
upstream_token_file = "$DIR/token"
trusted_proxies = ["$BALANCER"]
access_log = "$DIR/pushgate-access.log"
max_connections = 8192
threads = ${GATEWAY_THREADS:-0}
# The limits stay on (their cost is measured) but far above this load from one address.
rate_limit_per_source = 1000000000
rate_limit_burst = 1000000000
max_connections_per_source = 100000

[log]
level = "warn"
EOF
    "$PUSHGATE" gateway --config "$DIR/pushgate.toml" >"$DIR/pushgate.log" 2>&1 &
    PUSHGATE_PID=$!
    STARTED+=("$PUSHGATE_PID")
    sed -e "s|@DIR@|$DIR|g" -e "s|@CERT@|$DIR/$kind.pem|g" -e "s|@KEY@|$DIR/$kind.key|g" \
        -e "s|@LISTEN@|$NGINX_ADDR|g" -e "s|@UPSTREAM@|$STUB_ADDR|g" \
        -e "s|@TRUSTED_PROXY@|$BALANCER|g" -e "s|@TOKEN@|$TOKEN|g" \
        config/nginx-equivalent.conf > "$DIR/nginx.conf"
    nginx -q -c "$DIR/nginx.conf" -p "$DIR" -g 'daemon off; user root;' 2>>"$DIR/nginx-error.log" &
    NGINX_PID=$!
    STARTED+=("$NGINX_PID")
    wait_port "$PUSHGATE_ADDR"
    wait_port "$NGINX_ADDR"
    sleep 0.5
}
stop_servers() {
    kill "$PUSHGATE_PID" "$NGINX_PID" 2>/dev/null || true
    wait "$PUSHGATE_PID" "$NGINX_PID" 2>/dev/null || true
}
nginx_pids() { # master and workers
    echo -n "$NGINX_PID"
    for pid in $(pgrep -P "$NGINX_PID" || true); do echo -n ",$pid"; done
}

RESULTS="$DIR/runs.jsonl"
: > "$RESULTS"
run_side() { # side mode round
    local side=$1 mode=$2 round=$3 addr pids load_mode from extra=()
    if [ "$side" = pushgate ]; then addr=$PUSHGATE_ADDR; pids=$PUSHGATE_PID; else addr=$NGINX_ADDR; pids=$(nginx_pids); fi
    case $mode in
        full-*) load_mode=full; from=$CLIENT ;;
        resume-*) load_mode=resume; from=$CLIENT ;;
        keepalive) load_mode=keepalive; from=$BALANCER; extra=(--forwarded-for "$CLIENT") ;;
    esac
    local line
    line=$("$LOAD" run --addr "$addr" --ca "$DIR/$KIND.pem" --mode "$load_mode" --from "$from" \
        "${extra[@]}" --concurrency "$CONCURRENCY" --seconds "$RUN_SECONDS" --warmup "$WARMUP" \
        --body tests/fixtures/notifications/exo-capture.xml --pids "$pids" 2>>"$DIR/load.log")
    echo "{\"side\":\"$side\",\"bench\":\"$mode\",\"round\":$round,${line#\{}" >> "$RESULTS"
    echo "  $side $mode: $line" >&2
}

MEMORY=""
for KIND in ecdsa rsa; do
    modes_here=()
    for mode in $MODES; do
        case $mode in
            full-ecdsa) [ $KIND = ecdsa ] && modes_here+=("$mode") ;;
            *) [ $KIND = rsa ] && modes_here+=("$mode") ;;
        esac
    done
    [ ${#modes_here[@]} -eq 0 ] && [ $KIND = ecdsa ] && continue
    start_servers $KIND
    for mode in "${modes_here[@]}"; do
        echo "$mode: ${ROUNDS} rounds of pushgate and nginx, ${RUN_SECONDS} s each" >&2
        # Each round's order is swapped (A B, B A, A B, ...): a host whose load drifts during the
        # run then favours neither side, and every round pairs two runs next to each other in time.
        for round in $(seq 1 "$ROUNDS"); do
            if [ $((round % 2)) -eq 1 ]; then
                run_side pushgate "$mode" "$round"
                run_side nginx "$mode" "$round"
            else
                run_side nginx "$mode" "$round"
                run_side pushgate "$mode" "$round"
            fi
        done
    done
    if [ $KIND = rsa ]; then
        # Resident memory with 1,000 open TLS connections (handshake done, no request yet).
        MEMORY=$("$LOAD" hold --addr "$PUSHGATE_ADDR" --ca "$DIR/rsa.pem" --mode resume \
            --from "$CLIENT" --connections 1000 --seconds 2 --pids "$PUSHGATE_PID" 2>>"$DIR/load.log")
        NGINX_MEMORY=$("$LOAD" hold --addr "$NGINX_ADDR" --ca "$DIR/rsa.pem" --mode resume \
            --from "$CLIENT" --connections 1000 --seconds 2 --pids "$(nginx_pids)" 2>>"$DIR/load.log")
        echo "memory: pushgate $MEMORY; nginx $NGINX_MEMORY" >&2
    fi
    stop_servers
done

# --- the table ------------------------------------------------------------------------------
mkdir -p bench/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="bench/results/gateway-$STAMP.md"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
[ -n "${PUSHGATE_BIN:-}" ] && COMMIT="the gateway binary $PUSHGATE_BIN (PUSHGATE_BIN; not necessarily this checkout's $COMMIT), the script and nginx configuration of $COMMIT"
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
MACHINE="$(nproc) cores ($CPU_MODEL), $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -sr), load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
VERSIONS="$(rustc --version), $(nginx -v 2>&1 | sed 's/nginx version: //'), $(openssl version | cut -d' ' -f1-2)"

python3 - "$RESULTS" "$OUT" "$MACHINE" "$COMMIT" "$VERSIONS" "$RUN_SECONDS" "$ROUNDS" "$CONCURRENCY" "$MEMORY" "${NGINX_MEMORY:-}" <<'PY'
import json, statistics, sys
results, out, machine, commit, versions, seconds, rounds, concurrency, memory, nginx_memory = sys.argv[1:]
runs = [json.loads(line) for line in open(results)]
names = {"full-ecdsa": "new connection, full handshake, ECDSA P-256",
         "full-rsa": "new connection, full handshake, RSA-2048",
         "resume-rsa": "new connection, resumption allowed, RSA-2048",
         "keepalive": "keep-alive from a trusted proxy, RSA-2048"}
def paired(bench):
    """Per round: (pushgate/nginx requests/s, pushgate p99 no worse than nginx's)."""
    by_round = {}
    for r in runs:
        if r["bench"] == bench:
            by_round.setdefault(r["round"], {})[r["side"]] = r
    pairs = [(p["pushgate"], p["nginx"]) for p in by_round.values() if len(p) == 2]
    return [(a["rps"] / b["rps"] if b["rps"] else 0, a["p99_ms"] <= b["p99_ms"]) for a, b in pairs]
def side(bench, who):
    rs = [r for r in runs if r["bench"] == bench and r["side"] == who]
    if not rs:
        return None
    med = lambda k: statistics.median(r[k] for r in rs)
    return {"rps": med("rps"), "rps_all": [r["rps"] for r in rs], "p50": med("p50_ms"),
            "p99": med("p99_ms"), "cpu": med("cpu_s_per_1000"),
            "errors": sum(r["errors"] for r in rs),
            "resumed": sum(r["resumed"] for r in rs), "handshakes": sum(r["handshakes"] for r in rs)}
lines = []
lines.append(f"# pushgate gateway vs nginx\n")
lines.append(f"- machine: {machine}")
lines.append(f"- commit: {commit}")
lines.append(f"- versions: {versions}")
lines.append(f"- each run {seconds} s after a warm-up, {rounds} rounds per side, alternating with each round's order swapped (A B, B A, ...), {concurrency} concurrent clients, body exo-capture.xml (2,020 bytes); figures are medians of the rounds, the spread of requests/s in brackets")
lines.append(f"- paired: each round's pushgate run against the nginx run next to it in time; the median of those per-round ratios, and the rounds pushgate won (requests/s at least nginx's; p99 no worse)")
lines.append(f"- the load client and the upstream stub share the same cores as the server under test\n")
lines.append("| mode | side | requests/s | p50 ms | p99 ms | server CPU s / 1,000 req | resumed handshakes | errors |")
lines.append("|---|---|---|---|---|---|---|---|")
ratios = []
for bench, title in names.items():
    a, b = side(bench, "pushgate"), side(bench, "nginx")
    if not a or not b:
        continue
    for who, s in (("pushgate", a), ("nginx", b)):
        spread = "–".join(f"{x:,.0f}" for x in (min(s["rps_all"]), max(s["rps_all"])))
        resumed = f'{s["resumed"]}/{s["handshakes"]}' if s["handshakes"] else "–"
        lines.append(f'| {title} | {who} | {s["rps"]:,.0f} ({spread}) | {s["p50"]:.2f} | {s["p99"]:.2f} | {s["cpu"]:.3f} | {resumed} | {s["errors"]} |')
    ratio = a["rps"] / b["rps"] if b["rps"] else 0
    cpu_ratio = b["cpu"] / a["cpu"] if a["cpu"] else 0
    pairs = paired(bench)
    paired_ratio = statistics.median(r for r, _ in pairs) if pairs else 0
    won = sum(1 for r, _ in pairs if r >= 1.0)
    p99_won = sum(1 for _, ok in pairs if ok)
    ratios.append(f'| {title} | {ratio:.2f} | {paired_ratio:.2f} ({won}/{len(pairs)}) | {cpu_ratio:.2f} | {"no worse" if a["p99"] <= b["p99"] else "worse"} ({a["p99"]:.2f} vs {b["p99"]:.2f} ms; {p99_won}/{len(pairs)}) |')
lines.append("")
lines.append("| mode | pushgate/nginx requests/s (medians) | paired (rounds won) | nginx/pushgate CPU per request | pushgate p99 (rounds no worse) |")
lines.append("|---|---|---|---|---|")
lines.extend(ratios)
if memory:
    m = json.loads(memory)
    lines.append("")
    lines.append(f'Gateway resident memory with {m["connections_open"]} open TLS connections: {m["rss_kib_open"]/1024:.1f} MiB (idle, before: {m["rss_kib_before"]/1024:.1f} MiB; target < 64 MB).')
    if nginx_memory:
        n = json.loads(nginx_memory)
        lines.append(f'nginx (master and workers) with {n["connections_open"]} open: {n["rss_kib_open"]/1024:.1f} MiB.')
# Every round, so that a per-round reading (which side won when the host was quiet) can be
# checked from the record later.
lines.append("")
lines.append("## Rounds\n")
lines.append("| mode | round | side | requests/s | p50 ms | p99 ms | server CPU s / 1,000 req | errors |")
lines.append("|---|---|---|---|---|---|---|---|")
for r in runs:
    lines.append(f'| {r["bench"]} | {r["round"]} | {r["side"]} | {r["rps"]:,.0f} | {r["p50_ms"]:.2f} | {r["p99_ms"]:.2f} | {r["cpu_s_per_1000"]:.3f} | {r["errors"]} |')
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
echo "written to $OUT" >&2
