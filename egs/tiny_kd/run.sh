#!/usr/bin/env bash
# Stages 4-7 of the main recipe on a small corpus: teacher ensemble, soft targets, hard baseline
# and distilled student, hybrid decoding and the Table 1 analogue. Input: the data folder of
# stages 0-2 and an experiment folder holding stage 3's output (gmm/ali/...). About a minute on
# a CPU for the 'tiny' corpus. Run with --help for the options.
set -euo pipefail

egs_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root_dir="$(cd "$egs_dir/../.." && pwd)"

# ---- options (every one has its default here, before parsing) -------------------------------
stage=4
stop_stage=7
data=""                # recipe data folder (fbank/, lang/ of stages 1-2)
exp=""                 # experiment folder holding gmm/ali (stage 3); stages 4-7 write into it
num_teachers=2
nj=2
num_threads=1          # torch threads per process: small networks train faster on one thread
model_config=tiny      # DNN preset or YAML (DnnConfig)
train_config="$egs_dir/conf/train.yaml"
kd_config="$egs_dir/conf/kd.yaml"
results_md=""          # default: $exp/RESULTS.md

help_message="Usage: $0 --data DIR --exp DIR [options]

Stages (a finished stage is skipped: its folder holds a .done marker):
  4  teachers: --num-teachers DNNs differing only in their seed -> \$exp/teachers
  5  soft targets: the ensemble's top-k posteriors at T on the training cuts -> \$exp/soft_targets
  6  students: hard-target baseline and distilled student -> \$exp/students
  7  decoding (HCLG) and scoring: WER and frame accuracy -> \$exp/decode, Table 1 in RESULTS.md

Options (default in brackets):
  --stage N            first stage [$stage]
  --stop-stage N       last stage [$stop_stage]
  --data DIR           data folder of stages 0-2 (required)
  --exp DIR            experiment folder with stage 3's gmm/ali (required)
  --num-teachers N     teachers in the ensemble [$num_teachers]
  --nj N               parallel decoding jobs [$nj]
  --num-threads N      torch (OpenMP) threads per process [$num_threads]
  --model-config C     DNN preset (paper, mini, tiny) or DnnConfig YAML [$model_config]
  --train-config F     TrainConfig YAML [$train_config]
  --kd-config F        KdConfig YAML [$kd_config]
  --results-md F       RESULTS.md to write the sections to [\$exp/RESULTS.md]
  -h, --help           show this help
"

. "$root_dir/local/parse_options.sh"
. "$root_dir/local/recipe_lib.sh"

[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (try --help)" >&2; exit 1; }
[ -n "$data" ] && [ -n "$exp" ] || { echo "$0: --data and --exp are required (try --help)" >&2; exit 1; }
[ -f "$exp/gmm/ali/senones.json" ] || die "$exp/gmm/ali/senones.json is missing: run stage 3 (asr-kd train-gmm) first"
command -v asr-kd >/dev/null 2>&1 || die "asr-kd is not installed: run 'make venv' in $root_dir"
[ -n "$results_md" ] || results_md="$exp/RESULTS.md"
# Networks this small spend more time synchronising threads than computing; measured on 2 busy
# cores, one thread trained the tiny DNN many times faster than two.
export OMP_NUM_THREADS="$num_threads"

mkdir -p "$exp/log"
printf '%s\n' "$0 $*" > "$exp/log/tiny_kd.$(date '+%Y%m%d-%H%M%S').options"
common=(--data-dir "$data" --exp-dir "$exp" --results-md "$results_md")

if in_stages 4; then
  if is_done "$exp/teachers"; then log "Stage 4: teachers exist, skipping"; else
    log "Stage 4: $num_teachers teachers"
    run_logged "$exp/log/stage4_teachers.log" asr-kd train-teachers "${common[@]}" --num-teachers "$num_teachers" \
      --model-config "$model_config" --config "$train_config" --results-command "egs/tiny_kd/run.sh --stage 4 --stop-stage 4"
    mark_done "$exp/teachers"
  fi
fi

if in_stages 5; then
  if is_done "$exp/soft_targets"; then log "Stage 5: soft targets exist, skipping"; else
    log "Stage 5: soft targets"
    run_logged "$exp/log/stage5_soft_targets.log" asr-kd make-soft-targets "${common[@]}" --num-teachers "$num_teachers" \
      --kd-config "$kd_config" --results-command "egs/tiny_kd/run.sh --stage 5 --stop-stage 5"
    mark_done "$exp/soft_targets"
  fi
fi

if in_stages 6; then
  for kind in hard distilled; do
    if is_done "$exp/students/$kind"; then log "Stage 6: student $kind exists, skipping"; continue; fi
    log "Stage 6: student $kind"
    run_logged "$exp/log/stage6_student_$kind.log" asr-kd train-student "${common[@]}" --kind "$kind" \
      --num-teachers "$num_teachers" --model-config "$model_config" --config "$train_config" --kd-config "$kd_config" \
      --results-command "egs/tiny_kd/run.sh --stage 6 --stop-stage 6"
    mark_done "$exp/students/$kind"
  done
fi

if in_stages 7; then
  log "Stage 7: hybrid decoding and scoring"
  run_logged "$exp/log/stage7_decode.log" asr-kd decode-hybrid "${common[@]}" --num-teachers "$num_teachers" \
    --kd-config "$kd_config" --num-jobs "$nj" --corpus "the synthetic 'tiny' corpus" \
    --results-command "egs/tiny_kd/run.sh --stage 7 --stop-stage 7"
  mark_done "$exp/decode"
fi

log "Done: stages $stage to $stop_stage; results in $results_md"
