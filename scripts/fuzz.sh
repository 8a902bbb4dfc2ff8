#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (libFuzzer), after seeding each corpus
# from tests/fixtures, the shipped ranges list and fuzz/seeds. Exits non-zero when any target
# crashes (a panic, a broken property, a timeout or running out of memory); the crashing input
# stays in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh SECONDS [TARGET...]
#
# Toolchain: this machine's kind has only the stable toolchain and cannot fetch another. Without
# a sanitizer (the default, PUSHGATE_FUZZ_SANITIZER=none) cargo fuzz passes only stable codegen
# flags (-Cpasses=sancov-module, -Cllvm-args=...), so stable builds the targets as it is. With
# PUSHGATE_FUZZ_SANITIZER=address it adds -Zsanitizer=address, which only a nightly compiler
# accepts: the script then sets RUSTC_BOOTSTRAP=1 so that stable accepts it too (the x86_64 Linux
# rust-std ships the ASan runtime). PUSHGATE_FUZZ_TOOLCHAIN=nightly uses an installed nightly.
# No sanitizer by default: the code under test is safe Rust, where ASan finds little and costs
# about half the executions.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: scripts/fuzz.sh SECONDS [TARGET...]   (targets: $(all_targets | tr '\n' ' '))" >&2
  exit 2
}
all_targets() { sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^pushgate-fuzz$'; }

[ $# -ge 1 ] || usage
seconds=$1
shift
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || usage
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(all_targets); fi

if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

toolchain=()
case "${PUSHGATE_FUZZ_TOOLCHAIN:-stable}" in
  nightly)
    rustup run nightly rustc --version >/dev/null 2>&1 || {
      echo "fuzz.sh: PUSHGATE_FUZZ_TOOLCHAIN=nightly but no nightly toolchain is installed" >&2
      exit 2
    }
    toolchain=(+nightly)
    ;;
  stable) ;;
  *) echo "fuzz.sh: PUSHGATE_FUZZ_TOOLCHAIN is stable or nightly" >&2; exit 2 ;;
esac
cargo_fuzz=(cargo "${toolchain[@]}" fuzz)
sanitizer=${PUSHGATE_FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ] && [ "${#toolchain[@]}" -eq 0 ]; then
  # -Zsanitizer on the stable compiler.
  export RUSTC_BOOTSTRAP=1
fi
# Optimised, with debug assertions and overflow checks (cargo fuzz's default, said explicitly):
# an integer overflow panics as it does in the test suite.
flags=(--debug-assertions --sanitizer "$sanitizer")

# Seed the corpora (kept between runs; libFuzzer adds what it finds).
seed() {
  local target=$1
  shift
  mkdir -p "fuzz/corpus/$target"
  local file
  for file in "$@"; do
    [ -f "$file" ] && cp -n "$file" "fuzz/corpus/$target/seed-$(basename "$file")"
  done
  return 0
}
seed validator tests/fixtures/notifications/*.xml
seed ranges_file ranges/*.txt
seed feed tests/fixtures/ranges/*.json
for dir in fuzz/seeds/*/; do
  seed "$(basename "$dir")" "$dir"*
done
for target in "${targets[@]}"; do mkdir -p "fuzz/corpus/$target"; done

echo "fuzz.sh: building ${targets[*]} with $(rustc "${toolchain[@]}" --version)${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}, sanitizer $sanitizer"
for target in "${targets[@]}"; do
  "${cargo_fuzz[@]}" build "${flags[@]}" "$target"
done

mkdir -p fuzz/logs
failed=()
summary=()
for target in "${targets[@]}"; do
  log="fuzz/logs/$target.log"
  echo "fuzz.sh: $target for ${seconds}s (log: $log)"
  status=0
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb bounds memory on a shared machine.
  "${cargo_fuzz[@]}" run "${flags[@]}" "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  if [ "$status" -eq 0 ]; then
    summary+=("$target: ok, ${runs:-?} runs in ${took:-$seconds} s")
  else
    failed+=("$target")
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ -n "$artifact" ]; then
      summary+=("$target: CRASH after ${runs:-?} runs, input kept in $artifact")
    else
      summary+=("$target: FAILED to run (exit $status, no crashing input): see $log")
    fi
    echo "---- $target: the end of $log ----"
    tail -n 40 "$log"
    if [ -n "$artifact" ] && [ -f "fuzz/$artifact" ]; then artifact="fuzz/$artifact"; fi
    if [ -n "$artifact" ] && [ -f "$artifact" ]; then
      echo "---- crashing input (base64) ----"
      head -c 4096 "$artifact" | base64
      echo "reproduce: ${RUSTC_BOOTSTRAP:+RUSTC_BOOTSTRAP=1 }${cargo_fuzz[*]} run ${flags[*]} $target $artifact"
    fi
  fi
done

echo "fuzz.sh summary (${seconds} s per target):"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: crashes in ${failed[*]}" >&2
  exit 1
fi
