#!/usr/bin/env bash
# run-libfuzzer.sh BUILD_DIR SECONDS [HARNESS...]: fuzz every harness (or the
# ones named: line_reader command data_decoder session mboxrd http_head proxy_header) for SECONDS each.
#
# BUILD_DIR is a clang build with -Dfuzzing=true, normally also with
# -Db_sanitize=address,undefined -Db_lundef=false (see tests/fuzz/meson.build).
# Each fuzz-<name> runs over a copy of corpus/<name> (the checked-in corpus is
# left alone), with smtp.dict. A crash, leak, timeout, out-of-memory or broken
# invariant leaves its input in the work directory; the script prints it
# (xxd) with the end of the fuzzer's log, and exits 1. The work directory is
# kept and named at the end.
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 BUILD_DIR SECONDS [HARNESS...]" >&2
  exit 2
fi
build=$1
seconds=$2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/inboxd-fuzz.XXXXXX")
shift 2
harnesses=(line_reader command data_decoder session mboxrd http_head proxy_header pipe_command milter policy_codec smtp_reply)
[ $# -gt 0 ] && harnesses=("$@")

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

failed=0
for name in "${harnesses[@]}"; do
  bin=$build/tests/fuzz/fuzz-$name
  if [ ! -x "$bin" ]; then
    echo "$bin: missing; configure $build with -Dfuzzing=true" >&2
    exit 2
  fi
  # The standalone build has no libFuzzer flag table.
  if ! grep -aq max_total_time "$bin"; then
    echo "$bin: not built with libFuzzer; configure $build with -Dfuzzing=true" >&2
    exit 2
  fi
  corpus=$work/corpus-$name
  artifacts=$work/artifacts-$name
  mkdir -p "$corpus" "$artifacts"
  cp "$here/corpus/$name"/* "$corpus"/
  log=$work/$name.log
  echo "== fuzz-$name for ${seconds}s (log: $log)"
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -dict="$here/smtp.dict" -artifact_prefix="$artifacts/" -print_final_stats=1 \
    "$corpus" >"$log" 2>&1
  rc=$?
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|stat::peak_rss_mb' "$log" | sed 's/^/   /'
  echo "   corpus: $(ls "$corpus" | wc -l) inputs (started with $(ls "$here/corpus/$name" | wc -l))"
  shopt -s nullglob
  found=("$artifacts"/*)
  shopt -u nullglob
  if [ $rc -ne 0 ] || [ ${#found[@]} -gt 0 ]; then
    failed=1
    echo "!! fuzz-$name failed (exit $rc)"
    for f in "${found[@]}"; do
      echo "-- $f ($(wc -c <"$f") bytes)"
      xxd "$f" | head -64
    done
    echo "-- end of log:"
    tail -n 60 "$log"
  fi
done
echo "work directory: $work"
exit $failed
