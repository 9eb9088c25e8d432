#!/usr/bin/env bash
# Runs one fuzz target with cargo-afl and prints its figures.
#
#   fuzz/run.sh TARGET [SECONDS] [EXECUTIONS]
#
# TARGET is client_frame, peer_frame or mcp_args. The run stops after SECONDS (default 60)
# or about EXECUTIONS executions (default: no limit), whichever comes first. Findings go to
# fuzz/out/TARGET/default/{crashes,hangs}; fuzz/out is not committed.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?target: client_frame, peer_frame or mcp_args}
secs=${2:-60}
execs=${3:-}
[ -x "target/release/$target" ] || cargo afl build --release
out="out/$target"
rm -rf "$out"
mkdir -p out
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=${AFL_NO_AFFINITY:-1}
cargo afl fuzz -i "corpus/$target" -o "$out" -x dict/switchboard.dict -V "$secs" \
    ${execs:+-E "$execs"} -- "target/release/$target" > "$out.log" 2>&1 || true
stats="$out/default/fuzzer_stats"
grep -E '^(run_time|execs_done|execs_per_sec|corpus_count|bitmap_cvg|edges_found|total_edges|saved_crashes|saved_hangs|stability)' "$stats"
