#!/usr/bin/env bash
# moldbatch in any CI: the same three jobs as films.yml, as plain shell.
#
#   examples/ci/ci.sh review BASE_REVISION   # light install: validate, diff against BASE, storyboards
#   examples/ci/ci.sh render                 # GPU machine: render what is not cached
#
# FILMS (shell globs, default "films/*.yaml films/*.toml"), WORKDIR (a folder kept between
# runs, default .moldbatch-work), OUT (default renders) and GPU_BUDGET_MINUTES (default 120)
# may be set in the environment. Exit status: review exits 1 when something re-renders (so a
# pipeline can ask for approval before spending GPU time) and 2 on an invalid spec.
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
    moldbatch validate --strict "${specs[@]}"
    status=0
    mkdir -p storyboards
    for spec in "${specs[@]}"; do
      if git cat-file -e "$base:$spec" 2>/dev/null; then
        rc=0
        moldbatch diff "$base:$spec" "$spec" || rc=$?
        [ "$rc" -le 1 ] || exit "$rc"
        [ "$rc" -eq 0 ] || status=1
      else
        echo "$spec is new: every stage renders"
        status=1
      fi
      moldbatch plan "$spec" --html "storyboards/$(basename "${spec%.*}").html" >/dev/null
    done
    exit "$status"
    ;;
  render)
    for spec in "${specs[@]}"; do
      name=$(basename "${spec%.*}")
      moldbatch render "$spec" --workdir "$WORKDIR/$name" --out "$OUT/$name" \
        --max-gpu-minutes "$GPU_BUDGET_MINUTES"
    done
    ;;
  *)
    echo "usage: ci.sh review BASE_REVISION | ci.sh render" >&2
    exit 2
    ;;
esac
