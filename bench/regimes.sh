#!/usr/bin/env bash
# The regime study behind README's verdict (issues 10-12), as run for bench/reported/regimes/.
# Every run is cached in bench/results/runs/, so phases can be rerun, reordered or interrupted;
# `python bench/report.py --out bench/reported/regimes` then summarises whatever has run (JSON, PNG and the
# per-arm tables <experiment>.md); `python bench/report.py --from-reported bench/reported/regimes` rewrites
# the tables from the committed JSONs alone.
# Usage: bash bench/regimes.sh <phase>   (two 1-thread processes on the 2 cores: --jobs 2; no phase: the list)
# stop: auto ran with stop_horizon 1 (then its default) until phase horizon measured 0, the default now.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py="${PY:-python}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run() { "$py" bench/convergence.py --jobs 2 "$@"; }
width_sweep() {  # <regime> <width>...: λ0 1, 3, 10 and relative grad_ratio 1, 3, 10 at each width, seeds 1-2 (64 is the default width)
  local regime=$1 w width
  shift
  for w in "$@"; do  # both seeds in one call: its 14 runs keep both processes busy
    width=(); [ "$w" = 64 ] || width=(--width "$w")
    run --regime "$regime" "${width[@]}" --seeds 1,2 --lambda0s 1,3,10 \
      --arms 'baseline;let:strength=relative,grad_ratio=1;let:strength=relative,grad_ratio=3;let:strength=relative,grad_ratio=10'
  done
}
best="${BEST_LAMBDA0:-3}"  # teacher-ahead's best λ0 measured by phase sweep-ahead

case "${1:-}" in
  base)  # 3 seeds of baseline and the paper's setting (λ0 0.1, stop 0.25dur) in the two short regimes
    run --regime teacher-ahead --seeds 1,2,3
    run --regime weak-teacher --seeds 1,2,3 ;;
  sweep-ahead)  # λ0 sweep, 2 seeds
    run --regime teacher-ahead --seeds 1,2 --lambda0s 0.01,0.03,0.3,1,3 ;;
  auto-weak)  # acceptance 1 of issue 11: stop: auto at the default λ0 against the baseline
    run --regime weak-teacher --seeds 1,2,3 --arms 'baseline;let;let:stop=auto,stop_horizon=1' ;;
  best-ahead)  # the best λ0 at 3 seeds with 0.25dur, 0.5dur and stop: auto; S_stop 0.1/0.5dur at the default and best λ0
    run --regime teacher-ahead --seeds 1,2,3 \
      --arms "baseline;let;let:lambda0=$best;let:lambda0=$best,stop=auto,stop_horizon=1;let:lambda0=$best,stop=0.5dur"
    run --regime teacher-ahead --seeds 1,2 --stops 0.1dur,0.5dur --stop-lambda0s "0.1,$best" ;;
  sweep-weak)  # issue 10 §2 in weak-teacher: the λ0 sweep, S_stop at the default and the best λ0 (3), the best λ0 at 3 seeds with stop: auto
    run --regime weak-teacher --seeds 1,2 --lambda0s 0.01,0.03,0.3,1,3
    run --regime weak-teacher --seeds 1,2 --stops 0.1dur,0.5dur --stop-lambda0s 0.1,3
    run --regime weak-teacher --seeds 1,2,3 --arms 'baseline;let:lambda0=3;let:lambda0=3,stop=auto,stop_horizon=1' ;;
  sweep-overtake)  # issue 10 §2 in overtake: the rest of the λ0 sweep (0.1 and 3 ran in phase overtake) and of S_stop
    run --regime overtake --seeds 1,2 --lambda0s 1,0.3
    run --regime overtake --seeds 1,2 --lambda0s 0.03,0.01
    run --regime overtake --seeds 1,2 --stops 0.1dur,0.5dur --stop-lambda0s 0.1,3 ;;  # both stops at λ0 = 3: cached
  cross)  # issue 12: the same teacher recipe on a 4096-token BPE, LET across tokenizers at the best λ0
    # (runs before 2026-12-03 built the target from the teacher's folder: keyed apart, rerun here)
    run --regime teacher-ahead --cross-teacher --seeds 1,2 --arms "baseline;let:lambda0=$best" ;;
  cross-old-rule)  # issue 25.2: phase cross's LET arm with the position map before issue 25 (bench/old-rule.patch:
    # the last teacher token ending by the student token's end, words or not; the document fix kept), keyed apart
    tree="$(mktemp -d)/old-rule"
    git worktree add --detach "$tree" HEAD >/dev/null
    trap 'git worktree remove --force "$tree"' EXIT  # also when a run fails
    git -C "$tree" apply "$PWD/bench/old-rule.patch"
    PYTHONPATH="$tree" "$py" "$tree/bench/convergence.py" --jobs 2 --results "$PWD/bench/results" \
      --regime teacher-ahead --cross-teacher --seeds 1,2 --arms "baseline;let:lambda0=$best" ;;
  overtake)  # the paper's regime (1800 steps: ~3.6x a short run): the best λ0 of teacher-ahead, fixed and auto stop
    run --regime overtake --seeds 1,2,3 --arms "baseline;let:lambda0=$best;let:lambda0=$best,stop=auto,stop_horizon=1"
    run --regime overtake --seeds 1,2 --arms "baseline;let:lambda0=$best,stop=0.5dur"
    run --regime overtake --seeds 1,2 --arms "baseline;let" ;;  # the paper's setting, for reference
  width)  # issue 10 §3 / issue 11 acceptance 3, in teacher-ahead (in overtake: ~8 h of runs, phase width-overtake):
    # what one λ0 means per width, then the absolute λ0 and relative grad_ratio sweeps at target widths 32, 64, 128
    "$py" bench/pull_per_lambda.py --widths 32,64,128,192,512,1024,2048 --out bench/reported/regimes/pull-per-lambda.json
    width_sweep teacher-ahead 32 64 128
    run --regime teacher-ahead --width 128 --seeds 1,2 --arms 'baseline;let:lambda0=30' ;;  # does 128's optimum lie above 10?
  width-overtake)  # issue 10 §3 in the regime it names: ~7 h of runs (width 128 ~3 h), so run it in chunks (runs are cached);
    # 2026-12-02: all three widths, 2 seeds of every arm (width 64's baseline, λ0 1 and 3 in phases overtake, sweep-overtake)
    width_sweep overtake 64 32 128 ;;
  more-seeds)  # 2026-12-02: a third seed where an arm issue 10/11 counts on had two; seeds 4-5 for weak-teacher's λ0 = 0.1 gap
    run --regime overtake --seeds 3 --arms 'baseline;let'
    run --regime overtake --seeds 2 --arms "baseline;let:lambda0=$best,stop=auto,stop_horizon=0"
    run --regime teacher-ahead --seeds 3 --arms "baseline;let:lambda0=$best,stop=auto,stop_horizon=0"
    run --regime weak-teacher --seeds 4,5 --arms 'baseline;let;let:stop=auto,stop_horizon=0' ;;
  import)  # a new machine: after the teachers are trained (any phase of their regime, or --plan), put the reported runs back
    "$py" bench/convergence.py --import-reported bench/reported/regimes/{teacher-ahead,teacher-ahead-w32,teacher-ahead-w128,overtake,overtake-w32,overtake-w128,weak-teacher}.json ;;
  horizon)  # issue 11 acceptance 1: stop: auto firing only once the student has passed its teacher (stop_horizon 0),
    # in weak-teacher at the default and the best λ0; then where the replay says it never fires (= the 0.5dur arms)
    run --regime weak-teacher --seeds 1,2,3 \
      --arms "baseline;let:stop=auto,stop_horizon=0;let:lambda0=$best,stop=auto,stop_horizon=0"
    run --regime teacher-ahead --seeds 1,2 --arms "baseline;let:lambda0=$best,stop=auto,stop_horizon=0"
    run --regime overtake --seeds 3,1 --arms "baseline;let:lambda0=$best,stop=auto,stop_horizon=0" ;;
  placebo)  # issue 11 acceptance 1: how far a negligible alignment (λ0 = 0.001) moves weak-teacher's final loss per seed,
    # the noise floor of a paired gap there; and λ0 = 0.01 to 5 seeds (2026-12-02)
    run --regime weak-teacher --seeds 1,2,3,4,5 --arms 'baseline;let:lambda0=0.001;let:lambda0=0.01' ;;
  strength)  # issue 29: λ0 vs grad_ratio over >= 8x of pull per λ, teacher-ahead, 2 seeds per arm (jobs: JOBS, default 2).
    # Pull per λ at batch 1: widths 32..512 and, at width 64, the tied embedding scaled x4, x8 at init (the width-free knob)
    "$py" bench/pull_per_lambda.py --widths 32,64,128,256,512 --embed-scales 1 --out bench/reported/strength/pull-per-lambda-width.json
    "$py" bench/pull_per_lambda.py --widths 64 --embed-scales 1,4,8,16 --out bench/reported/strength/pull-per-lambda-embed.json
    rel='let:strength=relative,grad_ratio=1;let:strength=relative,grad_ratio=3;let:strength=relative,grad_ratio=10'
    run1() { "$py" bench/convergence.py --jobs "${JOBS:-2}" --regime teacher-ahead --seeds 1,2 "$@"; }
    run1 --width 256 --lambda0s 1,3,10,30,100 --arms "baseline;$rel"   # every arm at 256
    run1 --embed-scale 8 --lambda0s 1,3,10,30,100 --arms "baseline;$rel"   # the width-free control at 64
    for w in 32 64 128; do  # the relative arms again with the feedback controller; λ0 30 at 128 (10 was best there)
      width=(); [ "$w" = 64 ] || width=(--width "$w")
      l30=(); [ "$w" = 128 ] && l30=(--lambda0s 30)
      run1 "${width[@]}" "${l30[@]}" --arms "baseline;$rel"
    done ;;
  strength-512)  # issue 29: width 512, the baseline and the two best arms of each knob at 256 (BEST_512, ';'-separated)
    "$py" bench/convergence.py --jobs "${JOBS:-2}" --regime teacher-ahead --width 512 --seeds 1,2 --arms "baseline;${BEST_512:?}" ;;
  *) echo "usage: bash bench/regimes.sh base|sweep-ahead|strength|strength-512|auto-weak|best-ahead|sweep-weak|cross|cross-old-rule|overtake|sweep-overtake|width|width-overtake|horizon|more-seeds|placebo|import" >&2; exit 2 ;;
esac
