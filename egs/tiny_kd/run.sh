#!/usr/bin/env bash
# Stages 4-7 of the main recipe on a small corpus: teacher ensemble, soft targets, hard baseline
# and distilled student, hybrid decoding and the Table 1 analogue. Input: the data folder of
# stages 0-2 and an experiment folder holding stage 3's output (gmm/). About a minute on a CPU
# for the 'tiny' corpus. It runs recipes/librispeech/run.sh's own stages (nothing is copied
# here) with this folder's configs. Run with --help for the options.
set -euo pipefail

egs_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root_dir="$(cd "$egs_dir/../.." && pwd)"

# ---- options (every one has its default here, before parsing) -------------------------------
stage=4
stop_stage=7
data=""                # recipe data folder (fbank/, lang/ of stages 1-2)
exp=""                 # experiment folder holding gmm/ (stage 3); stages 4-7 write into it
num_teachers=2
nj=2
cmd=local              # where the trainings run: local, slurm or submitit-local (run.sh --cmd)
num_threads=1          # torch threads per process: small networks train faster on one thread
model_config=tiny      # DNN preset or YAML (DnnConfig)
train_config="$egs_dir/conf/train.yaml"
kd_config="$egs_dir/conf/kd.yaml"
results_md=""          # default: $exp/RESULTS.md
alignments=gmm         # labels the stages train on: gmm (stage 3's gmm/ali, this example's input) or dnn (run.sh --alignments dnn --stage 3 made exp/realign)

help_message="Usage: $0 --data DIR --exp DIR [options]

Stages 4-7 of recipes/librispeech/run.sh (code: asr_kd/stages/s4_teachers.py ... s7_decode.py);
a stage is skipped while its provenance.json matches its settings and inputs:
  4  teachers: --num-teachers DNNs differing only in their seed -> \$exp/teachers
  5  soft targets: the ensemble's top-k posteriors at T on the training cuts -> \$exp/soft_targets
  6  students: hard-target baseline and distilled student -> \$exp/students
  7  decoding (HCLG) and scoring: WER and frame accuracy -> \$exp/decode, Table 1 in RESULTS.md

Options (default in brackets):
  --stage N            first stage, 4..7 [$stage]
  --stop-stage N       last stage, 4..7 [$stop_stage]
  --data DIR           data folder of stages 0-2 (required)
  --exp DIR            experiment folder with stage 3's gmm/ (required)
  --num-teachers N     teachers in the ensemble [$num_teachers]
  --nj N               parallel decoding jobs [$nj]
  --cmd NAME           where stages 4 and 6 train: local, slurm (with recipes/librispeech/conf/slurm.yaml)
                       or submitit-local [$cmd]
  --num-threads N      torch (OpenMP) threads per process [$num_threads]
  --model-config C     DNN preset (paper, mini, tiny) or DnnConfig YAML [$model_config]
  --train-config F     TrainConfig YAML [$train_config]
  --kd-config F        KdConfig YAML [$kd_config]
  --results-md F       RESULTS.md to write the sections to [\$exp/RESULTS.md]
  --alignments A       gmm (stage 3's triphone-GMM labels) or dnn (its DNN realignment in \$exp/realign) [$alignments]
  -h, --help           show this help
"

. "$root_dir/local/parse_options.sh"
. "$root_dir/local/recipe_lib.sh"

[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (try --help)" >&2; exit 1; }
[ -n "$data" ] && [ -n "$exp" ] || { echo "$0: --data and --exp are required (try --help)" >&2; exit 1; }
[ "$stage" -ge 4 ] && [ "$stop_stage" -le 7 ] || { echo "$0: this example runs stages 4 to 7 only" >&2; exit 1; }
[ -f "$exp/gmm/provenance.json" ] || die "$exp/gmm/provenance.json is missing: run stage 3 (asr-kd train-gmm) first"
[ -n "$results_md" ] || results_md="$exp/RESULTS.md"

"$root_dir/recipes/librispeech/run.sh" --preset tiny --model-type hybrid --stage "$stage" --stop-stage "$stop_stage" \
  --data "$data" --exp "$exp" --results "$results_md" --num-teachers "$num_teachers" --nj "$nj" --cmd "$cmd" --num-threads "$num_threads" \
  --dnn-config "$model_config" --train-config "$train_config" --kd-config "$kd_config" --alignments "$alignments"
log "Done: stages $stage to $stop_stage; results in $results_md"
