#!/usr/bin/env bash
# The DMZ build: `--no-default-features --features gateway` must build a `pushgate` with the
# gateway, the ranges commands and `validate`, and nothing of the worker, the stores, the
# simulator or the demo. Builds it, checks its dependency graph and its commands, prints its size.
#   scripts/check-dmz-build.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
args=()
if [ "${1:-}" = "--release" ]; then
    profile=release
    args=(--release)
fi
features=(--no-default-features --features gateway)

cargo build "${args[@]}" "${features[@]}" --bin pushgate
binary="${CARGO_TARGET_DIR:-target}/$profile/pushgate"
# Keep the DMZ binary apart: the next build with default features writes the same path.
cp "$binary" "$binary-gateway"

# No database driver, no certificate generator, no simulator dependency in the graph.
forbidden='^(rusqlite|libsqlite3-sys|tokio-postgres|postgres-protocol|postgres-types|rcgen) '
found=$(cargo tree "${features[@]}" -e normal,build --prefix none --no-dedupe | grep -E "$forbidden" | sort -u || true)
if [ -n "$found" ]; then
    echo "check-dmz-build: the gateway-only build depends on:" >&2
    echo "$found" >&2
    exit 1
fi

# Its commands: the gateway's, the ranges', validate's; none of the worker's.
help=$("$binary-gateway" --help)
for command in gateway ranges validate; do
    if ! grep -Eq "^  $command( |$)" <<<"$help"; then
        echo "check-dmz-build: the gateway-only binary lacks \`$command\`" >&2
        exit 1
    fi
done
for command in worker demo simulate mailboxes events sync; do
    if grep -Eq "^  $command( |$)" <<<"$help"; then
        echo "check-dmz-build: the gateway-only binary carries \`$command\`" >&2
        exit 1
    fi
done
echo "check-dmz-build: $binary-gateway ($profile): $(du -h "$binary-gateway" | cut -f1), no database driver, no simulator, no demo"
