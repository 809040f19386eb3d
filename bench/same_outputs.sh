#!/bin/bash
# Are two checkouts' outputs byte-identical? A run on the demo's first 1,800 verses, then an update
# with the other 206, in each checkout; prints the sha256 of the outputs after each, then IDENTICAL
# or the differences. For refactors that must not change results (bench/README.md).
#   bench/same_outputs.sh PYTHON_A CHECKOUT_A PYTHON_B CHECKOUT_B
# e.g. bench/same_outputs.sh .venv/bin/python /tmp/before .venv/bin/python .
set -euo pipefail
work=$(mktemp -d)
demo=$(cd "$(dirname "$0")/.." && pwd)/demo/bible-verses.jsonl
head -1800 "$demo" > "$work/first.jsonl"
tail -n +1801 "$demo" > "$work/rest.jsonl"
one() {  # PYTHON CHECKOUT NAME
  local py=$1 tree=$2 w=$work/$3
  mkdir -p "$w"
  (cd "$tree" && export PYTHONPATH="$tree" &&
    "$py" -m theme_engine run "$work/first.jsonl" --id-field id --out "$w/out" --cache-dir "$work/cache" > "$w/run.log" 2>&1 &&
    mkdir -p "$w/run" && cp -L "$w"/out/{documents.parquet,duplicates.parquet,themes.json,model.npz} "$w/run/" &&
    "$py" -m theme_engine update "$w/out" "$work/rest.jsonl" > "$w/update.log" 2>&1 &&
    mkdir -p "$w/update" && cp -L "$w"/out/{documents.parquet,duplicates.parquet,themes.json,model.npz} "$w/update/")
  (cd "$w" && sha256sum run/* update/*)
}
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }  # a venv's python stays a link
one "$(abs "$1")" "$(abs "$2")" a > "$work/a.sha"
one "$(abs "$3")" "$(abs "$4")" b > "$work/b.sha"
cat "$work/b.sha"
if diff "$work/a.sha" "$work/b.sha"; then echo IDENTICAL; else echo DIFFERENT; fi
