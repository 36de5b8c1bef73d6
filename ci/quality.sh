#!/usr/bin/env bash
# The quality gate: run the `ci` profile of the pipeline in a scratch copy of this working tree and
# compare its metrics with the committed baseline (ci/baseline/). See docs/gate.md.
#
#   ci/quality.sh                                 # exit 0 passed, 1 a metric regressed, 2 cannot compare,
#                                                 # 3 the pipeline itself failed
#   ci/quality.sh --update-baseline "why"         # run, then make the result the new baseline (and commit it)
#   ci/quality.sh --keep                          # keep the scratch copy (its metrics/, models/, samples/)
#
# Environment: GATE_REPORT (Markdown report, default <repo>/gate-report.md), SPRITEGEN_THREADS (torch
# threads, default 2: the baseline's thread count; another count can change the last bits).
#
# Why a scratch copy: the ci profile writes its own params.yaml, data, models and metrics; the user's
# workspace (and its DVC cache and experiments) stays untouched. The copy is of the working tree (tracked
# files plus untracked, not ignored ones), so an uncommitted change is gated too.
# Needs `spritegen` and `dvc` on PATH (the Makefile's `make quality` puts the venv first).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
report="${GATE_REPORT:-$repo/gate-report.md}"
reason=""
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --update-baseline) reason="${2:?--update-baseline needs a reason}"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "ci/quality.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for tool in spritegen dvc git; do
  command -v "$tool" >/dev/null || { echo "ci/quality.sh: $tool is not on PATH (activate the venv, or make quality)" >&2; exit 2; }
done

scratch="$(mktemp -d "${TMPDIR:-/tmp}/spritegen-ci.XXXXXX")"
cleanup() { if [ "$keep" = 1 ]; then echo "scratch copy kept: $scratch"; else rm -rf "$scratch"; fi; }
trap cleanup EXIT

fail_report() {  # the PR comment must say what happened even when there is no table
  { echo "## Quality gate: ⚠️ $1"; echo; echo '```'; tail -n 40 "$2"; echo '```'; } >"$report"
}

# --- 1. scratch copy of the working tree, as its own git + DVC repository ---------------------------
echo "ci: copying the working tree of $repo to $scratch"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi; done |
  tar --null -T - -cf -) | tar -xf - -C "$scratch"
cd "$scratch"
git init -q
git add -A
git -c user.name=spritegen-ci -c user.email=ci@localhost -c commit.gpgsign=false commit -qm "ci scratch copy"

# --- 2. the ci profile, on the CPU, with a fixed thread count: same commit, same numbers ------------
export CUDA_VISIBLE_DEVICES="" SPRITEGEN_THREADS="${SPRITEGEN_THREADS:-2}" PYTHONHASHSEED=0
# (written to another file first: `> params.yaml` would empty the file before spritegen reads it)
spritegen params --preset ci >params.ci.yaml
mv params.ci.yaml params.yaml
start=$SECONDS
if ! { spritegen data fetch && dvc repro; } >"$scratch/pipeline.log" 2>&1; then
  tail -n 40 "$scratch/pipeline.log" >&2
  fail_report "the ci pipeline failed" "$scratch/pipeline.log"
  echo "ci: the pipeline failed (log above; report in $report)" >&2
  exit 3
fi
echo "ci: pipeline done in $((SECONDS - start)) s"

# --- 3. the gate (or a deliberate baseline update) ----------------------------------------------------
cd "$repo"
if [ -n "$reason" ]; then
  spritegen baseline update --params "$scratch/params.yaml" --current "$scratch/metrics" \
    --out "$repo/ci/baseline" --reason "$reason"
  exit $?
fi
set +e
spritegen gate --params "$scratch/params.yaml" --baseline "$repo/ci/baseline" --current "$scratch/metrics" \
  --markdown "$report" 2>"$scratch/gate.err"
rc=$?
set -e
cat "$scratch/gate.err" >&2
if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; then
  fail_report "cannot compare with the baseline" "$scratch/gate.err"
fi
echo "ci: gate exit code $rc; report in $report"
exit "$rc"
