#!/usr/bin/env bash
# Folds the last run's queue into fuzz/corpus/TARGET: afl-cmin picks the smallest inputs that
# together reach every edge the seeds and the queue reached. The hand-written seeds (*.json,
# one real frame per op) always stay; the picked inputs are added as min-<hash>, and the
# min-* files of an earlier fold are replaced.
#
#   fuzz/minimize.sh TARGET
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?target: client_frame, peer_frame or mcp_args}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/all"
cp "corpus/$target"/* "$tmp/all/"
cp "out/$target/default/queue"/id* "$tmp/all/" 2>/dev/null || true
export AFL_SKIP_CPUFREQ=1
cargo afl cmin -i "$tmp/all" -o "$tmp/min" -- "target/release/$target" >"$tmp/cmin.log" 2>&1
rm -f "corpus/$target"/min-*
for f in "$tmp"/min/*; do
    case "$(basename "$f")" in
    *.json) ;;
    *) cp "$f" "corpus/$target/min-$(sha1sum "$f" | cut -c1-12)" ;;
    esac
done
echo "corpus/$target: $(ls "corpus/$target" | wc -l) inputs"
