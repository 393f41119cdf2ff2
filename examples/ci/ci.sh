#!/usr/bin/env bash
# moldbatch in any CI: the same jobs as films.yml, as plain shell.
#
#   examples/ci/ci.sh review BASE_REVISION   # light install: validate, diff against BASE, storyboards
#   examples/ci/ci.sh render                 # GPU machine: pull, render what is not cached, gc
#
# FILMS (shell globs, default "films/*.yaml films/*.toml"), WORKDIR (a folder kept between
# runs, default .moldbatch-work), OUT (default renders) and GPU_BUDGET_MINUTES (default 120)
# may be set in the environment.
#
# Exit status of review: 0 when nothing re-renders, 1 when something does (so a pipeline can
# ask for approval before spending GPU time), 2 when a spec is invalid or cannot be read.
# Exit status of render: 0 when every film rendered, else the last failing film's `moldbatch
# render` exit code (3 a stage failed, 4 over budget, 5 an output collision, 6 a missing
# file); every film is tried, and the work folder keeps what was done.
set -euo pipefail
shopt -s nullglob

FILMS=${FILMS:-"films/*.yaml films/*.toml"}
WORKDIR=${WORKDIR:-.moldbatch-work}
OUT=${OUT:-renders}
GPU_BUDGET_MINUTES=${GPU_BUDGET_MINUTES:-120}
# shellcheck disable=SC2206 # the globs are meant to expand
specs=($FILMS)

case "${1:-}" in
  review)
    base=${2:?usage: ci.sh review BASE_REVISION}
    if [ ${#specs[@]} -eq 0 ]; then
      echo "no spec matches $FILMS: nothing to review"
      exit 0
    fi
    for spec in "${specs[@]}"; do   # each as `ci.sh render` renders it: its own --out
      moldbatch validate --strict --out "$OUT/$(basename "${spec%.*}")" "$spec" || exit 2
    done
    status=0
    mkdir -p storyboards
    for spec in "${specs[@]}"; do
      name=$(basename "${spec%.*}")
      rc=0
      moldbatch diff "$base:$spec" "$spec" || rc=$?   # a new spec: every stage is added
      [ "$rc" -le 1 ] || exit 2
      [ "$rc" -eq 0 ] || status=1
      moldbatch plan "$spec" --out "$OUT/$name" --html "storyboards/$name.html" >/dev/null
    done
    exit "$status"
    ;;
  render)
    [ ${#specs[@]} -gt 0 ] || { echo "no spec matches $FILMS: nothing to render"; exit 0; }
    args=()
    for spec in "${specs[@]}"; do args+=(--for "$spec"); done
    moldbatch pull "${args[@]}"   # what is missing; HF_TOKEN for gated repositories
    mkdir -p "$OUT"
    status=0
    for spec in "${specs[@]}"; do
      name=$(basename "${spec%.*}")
      rc=0
      moldbatch render "$spec" --workdir "$WORKDIR/$name" --out "$OUT/$name" \
        --max-gpu-minutes "$GPU_BUDGET_MINUTES" --json >"$OUT/$name.json" || rc=$?
      if [ "$rc" -ne 0 ]; then
        echo "ci.sh: $spec: render exited $rc (see $OUT/$name.json)" >&2
        status=$rc
      fi
      moldbatch gc "$spec" --workdir "$WORKDIR/$name" --lean || true
    done
    exit "$status"
    ;;
  *)
    echo "usage: ci.sh review BASE_REVISION | ci.sh render" >&2
    exit 2
    ;;
esac
