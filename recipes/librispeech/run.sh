#!/usr/bin/env bash
# The main asr-kd recipe: LibriSpeech (or the synthetic offline corpus in its layout) from
# audio to distilled acoustic models. Run ./run.sh --help for the stages and options.
set -euo pipefail

recipe_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root_dir="$(cd "$recipe_dir/../.." && pwd)"
# How this run was invoked, quoted in RESULTS.md by the stages that write it.
recipe_command="./run.sh${*:+ $*}"

# ---- options (every one has its default here, before parsing) -------------------------------
stage=0
stop_stage=8
corpus_dir=""          # an existing LibriSpeech folder (holding train-clean-100/ ...); empty: synthetic
download=false         # true: download LibriSpeech with lhotse into $data/download (needs internet)
preset=mini            # synthetic corpus size: tiny | mini | small
seed=0                 # synthetic corpus seed
difficulty=1.0         # synthetic corpus noise/reverberation level, 0 (clean) .. 3
synth_config="$recipe_dir/conf/synth.yaml"  # SynthConfig of the synthetic corpus: its synthesisers and perturbations
train_set=train-clean-100
dev_set=dev-clean
test_set=test-clean
ood_set=auto           # out-of-domain test part scored in every table; auto: test-ood on the synthetic corpus, none on real data
lexicon=""             # LibriSpeech's librispeech-lexicon.txt; empty: CMUdict
lm_text=""             # extra LM training text (one sentence per line, .gz allowed) beside the training transcripts
lm_arpa=""             # an existing ARPA LM (.gz allowed, e.g. openslr.org/11's 3-gram.pruned.1e-7.arpa.gz) instead of training one
nj=2                   # parallel jobs
cmd=local              # where the trainings of stages 4, 6, 8 and 10 run: local, slurm or submitit-local (like Kaldi's cmd.sh)
cmd_config="$recipe_dir/conf/slurm.yaml"  # ClusterConfig of --cmd slurm: partition, time, memory, CPUs, GPUs, array parallelism
data="$recipe_dir/data"
exp="$recipe_dir/exp"
feature_config="$recipe_dir/conf/features.yaml"
lang_config="$recipe_dir/conf/lang.yaml"
gmm_config=""          # GmmConfig YAML; empty: the preset's (conf/presets/<preset>.yaml)
results="$recipe_dir/RESULTS.md"
num_teachers=4         # teachers in the ensemble (the paper: 10)
dnn_config=""          # DnnConfig preset or YAML; empty: the preset's
compressed_config=""   # DnnConfig of the compressed distilled student (a quarter of a teacher's compute or less); empty: the preset's; none: no such student
compressed_train_config="" # TrainConfig of the compressed student; empty: the preset's, else --student-train-config, else --train-config
train_config=""        # TrainConfig YAML of the realignment DNN (given here: the teachers' and students' too); empty: the preset's
teacher_train_config="" # TrainConfig of stage 4's teachers; empty: the preset's, or --train-config
student_train_config="" # TrainConfig of stage 6's hard and distilled students and stage 10's; empty: the preset's, or --train-config
train_3pct_config=""   # TrainConfig YAML of stage 8's 3% runs; empty: the preset's
three_percent_hard_weight=0 # stage 8: hard-label weight of the soft-target model (0: soft targets only; kd.hard_weight is stage 6's)
kd_config=""           # KdConfig YAML; empty: the preset's
decode_config=""       # DecodeConfig YAML of stages 3 and 7 (beam, max-active, the acoustic-scale grid tuned on dev); empty: the preset's
decode_beam=""         # overrides the decode config's beam (stages 3 and 7) when set
alignments=""          # senone labels of stages 4-10: gmm (stage 3's triphone GMM) or dnn (a first-pass DNN realigns them, end of stage 3); empty: the preset's
num_seeds=""           # students per kind (stage 6), differing in their seed; empty: the preset's
temperatures="1 2 4 8" # stage 10 (opt-in): distilled students per temperature
sweep_extra_scales=""   # stage 10: acoustic scales beyond the decode grid's ends that the students' dev search may visit
sweep_seeds=1          # stage 10: students per temperature (stage 6's seeds; at the recipe's own T, stage 6's students)
sweep_targets=stored   # stage 10: stored soft targets (stage 5's, top-k) or online (the whole distribution in the loop)
num_threads=1          # torch threads per process (small networks train faster on one)
device=auto            # where networks score outside training (stages 3, 5, 7, 8, 10): auto (CUDA if present), cpu or cuda
model_type=hybrid      # hybrid (DNN-HMM, stages 3-8), ctc (CTC, stages 4-7) or both
ctc_config=""          # CtcConfig YAML; empty: the preset's
ctc_train_config=""    # TrainConfig YAML of the CTC models; empty: the preset's
ctc_decode_config="$recipe_dir/conf/decode_ctc.yaml" # DecodeConfig of CTC stage 7: beam, max-active (--decode-beam applies), the scale and blank-penalty grids tuned on dev
ctc_shared_init_steps=""   # > 0: also train a teacher set sharing its first steps; empty: the preset's
ctc_guide_weight=1.0   # > 0: also train a teacher set whose spikes are guided by teacher0's (guided CTC); 0: none
on_change=redo         # a finished stage whose settings or inputs changed: redo it, or stop with the differences
int8_max_relative=0.02 # stage 9: the largest relative test-WER increase of the int8 student over fp32 ONNX (asr_kd.config.INT8_MAX_RELATIVE)
deploy_uttcmvn="hard distilled compressed"  # stage 9: students trained again on per-utterance CMVN (what a model directory can give any file); none: skip

help_message="Usage: $0 [options]

Stages. Each writes provenance.json into its output folder when it finishes: the settings it ran
with, the fingerprints of its inputs (the records of the stages before it) and of its outputs.
A stage is skipped only when that record matches what it would run with now; otherwise it is
redone (--on-change redo) or stops naming the differences (--on-change stop), and the stages
after it see the changed fingerprint and follow. Delete a provenance.json to redo that stage.
The code of stage N is asr_kd/stages/sN_*.py (the CTC path: asr_kd/stages/ctc_sN_*.py, shared: ctc_common.py).
  0  corpus: the synthetic LibriSpeech-layout corpus (default, offline), an existing LibriSpeech
     folder (--corpus-dir) or a download (--download true) -> lhotse manifests in \$data/manifests
  1  features: 40-dim log-mel fbank (networks) and 13-dim MFCC (GMMs), lilcom storage, CMVN
     statistics -> \$data/fbank, \$data/mfcc
  2  lang: lexicon (--lexicon, else CMUdict), phones, words, L.fst, L_disambig.fst, a 3-gram LM
     (trained on the training transcripts and --lm-text, or --lm-arpa restricted to the lexicon)
     -> G.fst, in \$data/lang; the LM's OOV rate and perplexity on every evaluation part in \$results
  3  GMM-HMM: monophone flat start, tied triphones on our own decision tree, senone
     alignments of every cut of every part, HCLG, GMM decoding and WER -> \$exp/gmm,
     its section of \$results
     With --alignments dnn (the synthetic presets' choice; real LibriSpeech: gmm), then Kaldi's DNN realignment: one DNN (the
     teachers' DNN config, --train-config's TrainConfig) trained on those alignments aligns every part again -> \$exp/realign;
     stages 4-10 train on its labels and priors
  4  teachers: --num-teachers DNNs (the paper's spliced-frame DNN, a smaller config on 'mini')
     differing only in their seed, trained on the senone alignments -> \$exp/teachers
  5  soft targets: the ensemble's posteriors at temperature T, top-k stored on the training cuts,
     bytes per frame and KL(stored || full) reported -> \$exp/soft_targets
  6  students: a hard-target baseline and the distilled student (T^2-scaled soft term plus a
     lower-weighted hard term) of the same architecture -> \$exp/students
  7  hybrid decoding with HCLG (log posteriors minus log priors), WER (jiwer) and frame accuracy
     of baseline, ensemble and distilled: the paper's Table 1 analogue in \$results
  8  3% of the training data: hard targets (early stopping) vs the ensemble's soft targets, and
     the 100% baseline: the paper's Table 5 analogue and a plot of dev accuracy in \$results;
     --num-seeds subset draws, each with its own pair of models (means, deviations, each seed's share)
  9  (after the default --stop-stage; asr_kd/stages/s9_deploy.py) deployment: self-contained model directories of the teachers
     and students (\$exp/deploy), the distilled student exported to ONNX fp32 and int8, the cost
     table (parameters, MACs, real-time factors, memory, size, WER) of ensemble vs student and the
     int8 quality gate (fails above --int8-max-relative), and the int8 student end to end
     (features + network + search) with a search beam / max-active chosen on the dev part, in \$results;
     --deploy-uttcmvn students trained again (seed 0) on per-utterance normalised features, the distilled and
     compressed ones from the same stored soft targets (\$exp/students/<kind>_uttcmvn), as rows of the cost table,
     each at an acoustic scale chosen again on the dev part through its own model directory;
     the distilled one, what a user deploys, is gated too and is the one measured end to end
 10  (opt-in: --stage 10 --stop-stage 10) temperature sweep: soft targets and --sweep-seeds
     distilled students per --temperatures T (\$exp/students/sweep_T<T>[_seed<k>]; at the recipe's
     own T, stage 6's students), each decoded at its own dev-tuned acoustic scale; test frame
     accuracy and WER with intervals against the baseline and against the recipe's own T
With --model-type ctc (or both), stages 4-7 also (or instead) run the CTC path in \$exp/ctc:
  4  CTC teachers (independent seeds; a set sharing its first --ctc-shared-init-steps; a set
     guided by teacher0's spikes with weight --ctc-guide-weight)
  5  the teachers' spike misalignment report, every teacher set
  6  CTC students, --num-seeds of each: baseline, frame-level KD (KL at T, blank handling), sequence-level
     KD (the ensemble's pseudo-labels); and --num-seeds frame-level KD students of each extra teacher set
  7  greedy, prefix-beam and HLG decoding (each system's scale chosen on the dev part); token error
     rates and WER rows in \$results, a student's seeds averaged, intervals against the baseline (and
     of each extra set's frame student against the frame student)
  9  (after all of the above) the CTC baseline and frame-level students join stage 9's cost table, at
     their dev-tuned HLG scales, the frame-level one also as ONNX fp32 and int8 (the gate's system
     when the hybrid path does not run)
Stage 3 (GMM-HMM) is only needed by the hybrid path.

Options (default in brackets):
  --stage N            first stage to run [$stage]
  --stop-stage N       last stage to run [$stop_stage]
  --corpus-dir DIR     existing LibriSpeech folder; empty means the synthetic corpus [$corpus_dir]
  --download BOOL      download LibriSpeech with lhotse into \$data/download [$download]
  --preset NAME        synthetic corpus size: tiny, mini or small [$preset]
  --seed N             synthetic corpus seed [$seed]
  --difficulty X       synthetic corpus difficulty, 0 (clean) to 3 [$difficulty]
  --synth-config FILE  SynthConfig YAML of the synthetic corpus: its synthesisers and perturbations (the default
                       file lists every field at its default); --preset, --seed and --difficulty override it;
                       empty: SynthConfig's defaults [$synth_config]
  --train-set NAME     training part; train-960, train-clean-460 or a+b combine parts [$train_set]
  --dev-set NAME       development part [$dev_set]
  --test-set NAME      test part [$test_set]
  --ood-set NAME       out-of-domain test part, a column in every table; auto: the synthetic corpus's
                       test-ood (a synthesiser family no training part uses), none on real LibriSpeech
                       (pass test-other there); none: no such part [$ood_set]
  --lexicon FILE       pronunciation lexicon in LibriSpeech's format; empty means CMUdict [$lexicon]
  --lm-text FILE       extra LM training text, one sentence per line (.gz allowed) [$lm_text]
  --lm-arpa FILE       existing ARPA LM (.gz allowed) used instead of training one [$lm_arpa]
  --nj N               parallel jobs [$nj]
  --cmd NAME           where the trainings of stages 4, 6, 8 and 10 run, one job per model: local (processes on this
                       machine, --nj at a time), slurm (a Slurm job array through submitit, sized by --cmd-config)
                       or submitit-local (the Slurm path on this machine, to check a set-up) [$cmd]
  --cmd-config F       ClusterConfig YAML of --cmd slurm (partition, time_min, mem_gb, cpus_per_task, gpus_per_node,
                       array_parallelism, account, qos, setup) [$cmd_config]
  --data DIR           data folder [$data]
  --exp DIR            experiment folder (logs, models) [$exp]
  --feature-config F   FeatureConfig YAML [$feature_config]
  --lang-config F      LangConfig YAML [$lang_config]
  --gmm-config F       GmmConfig YAML; empty: conf/presets/<preset>.yaml names it [$gmm_config]
  --results FILE       RESULTS.md that stages 2+ write their tables to [$results]
  --num-teachers N     teachers in the ensemble [$num_teachers]
  --dnn-config C       DNN preset (paper, mini, tiny) or DnnConfig YAML; empty: the preset's [$dnn_config]
  --compressed-config C  DNN preset or DnnConfig YAML of a compressed distilled student (stage 6; a row in stage 7's
                       Table 1 and stage 9's cost table); empty: the preset's; none: none [$compressed_config]
  --compressed-train-config F  TrainConfig YAML of the compressed student; empty: the preset's if it names one,
                       else --student-train-config, else --train-config [$compressed_train_config]
  --train-config F     TrainConfig YAML of stage 3's realignment DNN, and of the teachers and students unless
                       --teacher-train-config / --student-train-config is given; empty: the preset's [$train_config]
  --teacher-train-config F  TrainConfig YAML of stage 4's teachers; empty: the preset's unless --train-config is
                       given, else --train-config [$teacher_train_config]
  --student-train-config F  TrainConfig YAML of stage 6's hard-target and distilled students (the same for both
                       kinds) and of stage 10's; empty: the preset's unless --train-config is given, else
                       --train-config [$student_train_config]
  --train-3pct-config F  TrainConfig YAML of stage 8's 3% runs; empty: the preset's [$train_3pct_config]
  --three-percent-hard-weight W  stage 8: weight of the hard labels beside the soft targets in the 3% soft
                       model (0: soft targets only, which recovered 57% of the gap on mini against 48% at the kd
                       config's 0.5; the kd config's weight stays stage 6's) [$three_percent_hard_weight]
  --kd-config F        KdConfig YAML (temperature, weights, top-k, fusion); empty: the preset's [$kd_config]
  --decode-config F    DecodeConfig YAML of stages 3 and 7: one beam and max-active for every system,
                       each system's acoustic scale tuned on the dev part; empty: the preset's [$decode_config]
  --decode-beam X      override the decode config's beam [$decode_beam]
  --alignments A       senone labels and priors of stages 4-10: gmm (stage 3's triphone GMM) or dnn (realigned by a
                       first-pass DNN at the end of stage 3); empty: the preset's [$alignments]
  --num-seeds N        students per kind (stage 6) and 3% subsets (stage 8), for means, deviations and intervals; empty: the preset's [$num_seeds]
  --temperatures "T.." stage 10: the temperatures of the sweep [$temperatures]
  --sweep-seeds N      stage 10: students per temperature, with stage 6's seeds [$sweep_seeds]
  --sweep-extra-scales "S.."  stage 10: acoustic scales beyond both ends of the decode config's grid that the
                       students' dev search may also visit (the baseline keeps stage 7's) [$sweep_extra_scales]
  --sweep-targets S    stage 10: stored (stage 5's soft targets at each T) or online (each student learns the
                       ensemble's whole distribution in the loop; nothing stored, its own section) [$sweep_targets]
  --num-threads N      torch threads per process [$num_threads]
  --device D           where networks score outside training: stage 3's realignment, stage 5's soft targets,
                       stages 7 and 8's posteriors, stage 10's targets, and CTC stages 5-7's log-probabilities;
                       auto (CUDA if present), cpu or cuda
                       (training picks its own from the train config's device, auto by default) [$device]
  --model-type T       hybrid, ctc or both [$model_type]
  --ctc-config F       CtcConfig YAML; empty: the preset's [$ctc_config]
  --ctc-train-config F TrainConfig YAML of the CTC models; empty: the preset's [$ctc_train_config]
  --ctc-decode-config F  DecodeConfig YAML of CTC stage 7 (beam, max-active, ctc_acoustic_scales: each system's HLG
                       scale chosen on the dev part; --decode-beam overrides its beam too) [$ctc_decode_config]
  --ctc-shared-init-steps N  steps shared by the second CTC teacher set; 0: none [$ctc_shared_init_steps]
  --ctc-guide-weight W guided-CTC weight of the third CTC teacher set; 0: none [$ctc_guide_weight]
  --on-change redo|stop  a finished stage whose settings changed: redo it, or stop [$on_change]
  --int8-max-relative X  stage 9: largest relative WER increase of int8 over fp32 [$int8_max_relative]
  --deploy-uttcmvn \"K ...\"  stage 9: students (hard, distilled, compressed) trained again on per-utterance CMVN; none: skip [$deploy_uttcmvn]
  -h, --help           show this help

Examples:
  $0                                   # all stages on the synthetic 'mini' corpus (make demo)
  $0 --corpus-dir /data/LibriSpeech    # real LibriSpeech
  $0 --stage 1 --stop-stage 1          # only features
"

. "$root_dir/local/parse_options.sh"
. "$root_dir/local/recipe_lib.sh"

[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (try --help)" >&2; exit 1; }
for v in "$stage" "$stop_stage"; do
  case "$v" in ""|*[!0-9]*) echo "$0: --stage and --stop-stage take integers, got '$v'" >&2; exit 1 ;; esac
done
[ "$stage" -le "$stop_stage" ] || { echo "$0: --stage $stage is after --stop-stage $stop_stage: nothing would run" >&2; exit 1; }
case "$preset" in tiny|mini|small) ;; *) echo "$0: --preset takes tiny, mini or small, got '$preset'" >&2; exit 1 ;; esac
case "$cmd" in local|slurm|submitit-local) ;; *) echo "$0: --cmd takes local, slurm or submitit-local, got '$cmd'" >&2; exit 1 ;; esac
case "$device" in auto|cpu|cuda) ;; *) echo "$0: --device takes auto, cpu or cuda, got '$device'" >&2; exit 1 ;; esac
case "$on_change" in redo|stop) ;; *) echo "$0: --on-change takes redo or stop, got '$on_change'" >&2; exit 1 ;; esac
case "$sweep_targets" in stored|online) ;; *) echo "$0: --sweep-targets takes stored or online, got '$sweep_targets'" >&2; exit 1 ;; esac
export ASR_KD_ON_CHANGE="$on_change"
export ASR_KD_INFERENCE_DEVICE="$device"  # asr_kd.kd.ensemble.inference_device
case "$model_type" in hybrid|ctc|both) ;; *) echo "$0: --model-type takes hybrid, ctc or both, got '$model_type'" >&2; exit 1 ;; esac
case "$ctc_guide_weight" in ""|*[!0-9.]*|*.*.*) echo "$0: --ctc-guide-weight takes a number >= 0, got '$ctc_guide_weight'" >&2; exit 1 ;; esac
case "$three_percent_hard_weight" in ""|*[!0-9.]*|*.*.*) echo "$0: --three-percent-hard-weight takes a number >= 0, got '$three_percent_hard_weight'" >&2; exit 1 ;; esac
[ -n "${deploy_uttcmvn// /}" ] || { echo "$0: --deploy-uttcmvn takes hard, distilled, compressed or none, got an empty list" >&2; exit 1; }
[ "$deploy_uttcmvn" = none ] || for k in $deploy_uttcmvn; do
  case "$k" in hard|distilled|compressed) ;; *) echo "$0: --deploy-uttcmvn takes hard, distilled, compressed (or none), got '$k'" >&2; exit 1 ;; esac
  [ "$(tr ' ' '\n' <<< "$deploy_uttcmvn" | grep -cx "$k")" -eq 1 ] || { echo "$0: --deploy-uttcmvn names '$k' twice" >&2; exit 1; }
done
hybrid=true; ctc=false
[ "$model_type" != ctc ] || hybrid=false
[ "$model_type" = hybrid ] || ctc=true
command -v asr-kd >/dev/null 2>&1 || die "asr-kd is not installed: run 'make venv' in $root_dir (or activate its .venv)"

# Configs an option left empty come from the preset's file (real LibriSpeech: librispeech.yaml).
preset_file="$recipe_dir/conf/presets/$preset.yaml"
[ -z "$corpus_dir" ] && [ "$download" = false ] || preset_file="$recipe_dir/conf/presets/librispeech.yaml"
train_config_given="$train_config"
while IFS= read -r line; do
  case "$line" in ""|"#"*) continue ;; esac
  key="${line%%:*}" value="${line#*:}"
  value="${value#"${value%%[! ]*}"}"
  case "$key" in gmm_config|dnn_config|compressed_config|compressed_train_config|train_config|teacher_train_config|student_train_config|train_3pct_config|kd_config|decode_config|num_seeds|alignments|ctc_config|ctc_train_config|ctc_shared_init_steps) ;;
    *) die "$preset_file: unknown option '$key'" ;; esac
  # A --train-config given on the command line trains the teachers and students too, unless
  # --teacher-train-config / --student-train-config is given.
  case "$key" in teacher_train_config|student_train_config) [ -z "$train_config_given" ] || continue ;; esac
  case "$value" in */*|*.yaml) value="$recipe_dir/$value" ;; esac
  [ -n "${!key}" ] || printf -v "$key" '%s' "$value"
done < "$preset_file"

mkdir -p "$exp/log"
# Record how this run was invoked, Kaldi style.
printf '%s\n' "$0 $*" "stage=$stage stop_stage=$stop_stage corpus_dir=$corpus_dir download=$download preset=$preset seed=$seed difficulty=$difficulty synth_config=$synth_config train_set=$train_set dev_set=$dev_set test_set=$test_set lexicon=$lexicon nj=$nj data=$data exp=$exp" \
  > "$exp/log/run.$(date '+%Y%m%d-%H%M%S').options"

if [ "$ood_set" = auto ]; then
  ood_set=test-ood
  [ -z "$corpus_dir" ] && [ "$download" = false ] || ood_set=""
fi
[ "$ood_set" != none ] || ood_set=""
parts=("$train_set" "$dev_set" "$test_set")
[ -z "$ood_set" ] || parts+=("$ood_set")
case "$num_seeds" in ""|*[!0-9]*|0) die "--num-seeds takes an integer >= 1, got '$num_seeds'" ;; esac
case "$sweep_seeds" in ""|*[!0-9]*|0) die "--sweep-seeds takes an integer >= 1, got '$sweep_seeds'" ;; esac
case "$alignments" in gmm|dnn) ;; *) die "--alignments takes gmm or dnn, got '$alignments'" ;; esac
decode_beam_set=()
[ -z "$decode_beam" ] || decode_beam_set=(--decode-set "beam=$decode_beam")
compressed_opt=()
[ "$compressed_config" = none ] || compressed_opt=(--compressed)

# Stage 0: asr_kd/stages/s0_corpus.py
if in_stages 0; then
  if [ -n "$corpus_dir" ]; then
    log "Stage 0: LibriSpeech from $corpus_dir"
    src="$corpus_dir"
  elif [ "$download" = true ]; then
    log "Stage 0: downloading LibriSpeech parts ${parts[*]}"
    run_logged "$exp/log/stage0_download.log" asr-kd download-librispeech --target-dir "$data/download" --parts "${parts[@]}"
    src="$data/download/LibriSpeech"
  else
    src="$data/corpus"
    log "Stage 0: the synthetic '$preset' corpus (seed $seed, difficulty $difficulty) in $src"
    synth_opt=()
    [ -z "$synth_config" ] || synth_opt=(--config "$synth_config")
    run_logged "$exp/log/stage0_synth.log" asr-kd synth-corpus --output-dir "$src" --preset "$preset" \
      --seed "$seed" --difficulty "$difficulty" --num-jobs "$nj" "${synth_opt[@]}"
  fi
  log "Stage 0: lhotse manifests"
  run_logged "$exp/log/stage0_manifests.log" asr-kd prepare-manifests --corpus-dir "$src" \
    --output-dir "$data/manifests" --parts "${parts[@]}" --num-jobs "$nj"
fi

# Stage 1: asr_kd/stages/s1_features.py
if in_stages 1; then
  log "Stage 1: fbank and MFCC features"
  run_logged "$exp/log/stage1_features.log" asr-kd compute-features --manifest-dir "$data/manifests" \
    --output-dir "$data" --parts "${parts[@]}" --config "$feature_config" --set "num_jobs=$nj"
fi

# Stage 2: asr_kd/stages/s2_lang.py
if in_stages 2; then
  log "Stage 2: lexicon, L.fst, language model, G.fst"
  lexicon_opt=()
  [ -z "$lexicon" ] || lexicon_opt=(--lexicon "$lexicon")
  [ -z "$lm_text" ] || lexicon_opt+=(--lm-text "$lm_text")
  [ -z "$lm_arpa" ] || lexicon_opt+=(--lm-arpa "$lm_arpa")
  run_logged "$exp/log/stage2_lang.log" asr-kd prepare-lang --manifest-dir "$data/manifests" \
    --output-dir "$data/lang" --train-split "$train_set" --dev-split "$dev_set" --splits "${parts[@]}" \
    --config "$lang_config" "${lexicon_opt[@]}" --results-md "$results" --results-command "$recipe_command"
  asr-kd data-summary --manifest-dir "$data/manifests" --lang-dir "$data/lang" --parts "${parts[@]}"
fi

corpus_name="the synthetic '$preset' corpus"
[ -z "$corpus_dir" ] && [ "$download" = false ] || corpus_name="LibriSpeech ($train_set)"
# What the hybrid stages 3 (realignment) to 10 share; --alignments makes each of them use (or, after stage 4, check) the same labels.
kd_common=(--data-dir "$data" --exp-dir "$exp" --train-set "$train_set" --dev-set "$dev_set" --test-set "$test_set" --ood-set "$ood_set"
           --results-md "$results" --results-command "$recipe_command" --num-threads "$num_threads" --alignments "$alignments")
cmd_opts=(--cmd "$cmd" --cmd-config "$cmd_config")  # where stages 4, 6, 8 and 10 train their models

# Stage 3: asr_kd/stages/s3_gmm.py, then (--alignments dnn) asr_kd/stages/s3_realign.py
if [ "$hybrid" = true ] && in_stages 3; then
  log "Stage 3: GMM-HMM (monophone, tied triphones), senone alignments, HCLG, WER ($gmm_config)"
  run_logged "$exp/log/stage3_gmm.log" asr-kd train-gmm --data-dir "$data" --lang-dir "$data/lang" \
    --exp-dir "$exp" --train-set "$train_set" --dev-set "$dev_set" --test-set "$test_set" --ood-set "$ood_set" \
    --parts "${parts[@]}" --config "$gmm_config" \
    --decode-config "$decode_config" "${decode_beam_set[@]}" \
    --num-jobs "$nj" --results-md "$results" --recipe-command "$recipe_command"
  if [ "$alignments" = dnn ]; then
    log "Stage 3: DNN realignment, a first-pass DNN ($dnn_config, $train_config) aligns every part again"
    run_logged "$exp/log/stage3_realign.log" asr-kd realign "${kd_common[@]}" \
      --model-config "$dnn_config" --config "$train_config"
  fi
fi

export OMP_NUM_THREADS="$num_threads"

# Stage 4: asr_kd/stages/s4_teachers.py
if [ "$hybrid" = true ] && in_stages 4; then
  log "Stage 4: $num_teachers teachers ($dnn_config, ${teacher_train_config:-$train_config})"
  run_logged "$exp/log/stage4_teachers.log" asr-kd train-teachers "${kd_common[@]}" \
    --num-teachers "$num_teachers" --model-config "$dnn_config" --config "${teacher_train_config:-$train_config}" --jobs "$nj" "${cmd_opts[@]}"
fi

# Stage 5: asr_kd/stages/s5_soft_targets.py
if [ "$hybrid" = true ] && in_stages 5; then
  log "Stage 5: the ensemble's soft targets ($kd_config)"
  run_logged "$exp/log/stage5_soft_targets.log" asr-kd make-soft-targets "${kd_common[@]}" \
    --num-teachers "$num_teachers" --kd-config "$kd_config" --device "$device"
fi

# Stage 6: asr_kd/stages/s6_students.py
if [ "$hybrid" = true ] && in_stages 6; then
  log "Stage 6: TrainConfig of the hard-target and distilled students: ${student_train_config:-$train_config}; of the compressed student: ${compressed_train_config:-${student_train_config:-$train_config}}"
  log "Stage 6: hard-target and distilled students, $num_seeds seed(s) each"
  run_logged "$exp/log/stage6_students.log" asr-kd train-student "${kd_common[@]}" --kind hard distilled \
    --num-seeds "$num_seeds" --jobs "$nj" "${cmd_opts[@]}" --num-teachers "$num_teachers" --model-config "$dnn_config" \
    --config "${student_train_config:-$train_config}" --kd-config "$kd_config"
  if [ "$compressed_config" != none ]; then
    log "Stage 6: the compressed distilled student ($compressed_config), $num_seeds seed(s)"
    run_logged "$exp/log/stage6_compressed.log" asr-kd train-student "${kd_common[@]}" --kind compressed \
      --num-seeds "$num_seeds" --jobs "$nj" "${cmd_opts[@]}" --num-teachers "$num_teachers" --model-config "$compressed_config" \
      --config "${compressed_train_config:-${student_train_config:-$train_config}}" --kd-config "$kd_config"
  fi
fi

# Stage 7: asr_kd/stages/s7_decode.py
if [ "$hybrid" = true ] && in_stages 7; then
  log "Stage 7: hybrid decoding, WER and frame accuracy (Table 1)"
  run_logged "$exp/log/stage7_decode.log" asr-kd decode-hybrid "${kd_common[@]}" --num-teachers "$num_teachers" \
    --kd-config "$kd_config" --num-jobs "$nj" --decode-config "$decode_config" "${decode_beam_set[@]}" --num-seeds "$num_seeds" \
    --corpus "$corpus_name" "${compressed_opt[@]}"
  sed -n '/^## Table 1 analogue/,/^Paper numbers/p' "$results"
fi

# Stage 8: asr_kd/stages/s8_three_percent.py
if [ "$hybrid" = true ] && in_stages 8; then
  log "Stage 8: 3% of the training data, hard vs soft targets (Table 5)"
  run_logged "$exp/log/stage8_three_percent.log" asr-kd three-percent "${kd_common[@]}" --num-teachers "$num_teachers" \
    --num-seeds "$num_seeds" --jobs "$nj" "${cmd_opts[@]}" --model-config "$dnn_config" --config "$train_3pct_config" --kd-config "$kd_config" \
    --kd-set "hard_weight=$three_percent_hard_weight" --corpus "$corpus_name"
  sed -n '/^## Table 5 analogue/,/^Paper numbers/p' "$results"
fi

# Stage 10: asr_kd/stages/s10_temperature_sweep.py (opt-in)
if [ "$hybrid" = true ] && in_stages 10; then
  log "Stage 10: $sweep_seeds distilled student(s) at each T = $temperatures (${student_train_config:-$train_config})"
  # shellcheck disable=SC2086  # one argument per temperature
  run_logged "$exp/log/stage10_temperature_sweep.log" asr-kd temperature-sweep "${kd_common[@]}" --num-teachers "$num_teachers" \
    --model-config "$dnn_config" --config "${student_train_config:-$train_config}" --kd-config "$kd_config" --decode-config "$decode_config" "${decode_beam_set[@]}" \
    --kd-set "mode=$sweep_targets" --temperatures $temperatures --num-seeds "$sweep_seeds" ${sweep_extra_scales:+--extra-scales $sweep_extra_scales} --jobs "$nj" "${cmd_opts[@]}"
  sweep_heading='^## Temperature sweep:'
  [ "$sweep_targets" = stored ] || sweep_heading='^## Temperature sweep with online'
  awk -v h="$sweep_heading" '$0 ~ h {p = 1; print; next} /^## / {p = 0} p' "$results"
fi

if [ "$ctc" = true ]; then
  # The teacher sets besides the config's own: their names and CtcConfig overrides.
  ctc_extra_names=() ctc_extra_sets=()
  if [ "$ctc_shared_init_steps" -gt 0 ]; then
    ctc_extra_names+=("shared$ctc_shared_init_steps") ctc_extra_sets+=("shared_init_steps=$ctc_shared_init_steps")
  fi
  if awk -v w="$ctc_guide_weight" 'BEGIN { exit !(w + 0 > 0) }'; then
    ctc_extra_names+=("guided$ctc_guide_weight") ctc_extra_sets+=("guide_weight=$ctc_guide_weight")
  fi
  ctc_common=(--data-dir "$data" --exp-dir "$exp" --train-set "$train_set" --dev-set "$dev_set" --test-set "$test_set" --ood-set "$ood_set"
              --ctc-config "$ctc_config" --results-md "$results" --results-command "$recipe_command" --num-threads "$num_threads")
  # CTC stages 4-7: asr_kd/stages/ctc_s4_teachers.py ... ctc_s7_decode.py. Each teacher set, student, the units, the graph
  # and the decoding keep their own provenance.json and are skipped while it matches.
  if in_stages 4; then
    log "Stage 4 (CTC): teachers ($ctc_config, $ctc_train_config)"
    run_logged "$exp/log/stage4_ctc_teachers.log" asr-kd ctc-train-teachers "${ctc_common[@]}" --config "$ctc_train_config" \
      --jobs "$nj" "${cmd_opts[@]}"
    for i in "${!ctc_extra_sets[@]}"; do
      log "Stage 4 (CTC): teachers with ${ctc_extra_sets[$i]}"
      run_logged "$exp/log/stage4_ctc_teachers_${ctc_extra_names[$i]}.log" asr-kd ctc-train-teachers "${ctc_common[@]}" \
        --config "$ctc_train_config" --ctc-set "${ctc_extra_sets[$i]}" --jobs "$nj" "${cmd_opts[@]}"
    done
  fi
  if in_stages 5; then
    log "Stage 5 (CTC): spike misalignment of the teachers"
    run_logged "$exp/log/stage5_ctc_spikes.log" asr-kd ctc-spike-report "${ctc_common[@]}"
  fi
  if in_stages 6; then
    # --num-seeds students per kind (as the hybrid students) and of a frame-level student per extra
    # teacher set (does a set with aligned spikes distil better? stage 7 compares it with the frame
    # student), each a job of --cmd (--nj local processes at a time, or a Slurm array). Seed 0 of
    # every student runs first: it makes what the other seeds reuse.
    ctc_extra_opts=()
    for i in "${!ctc_extra_sets[@]}"; do
      log "Stage 6 (CTC): frame_${ctc_extra_names[$i]} student (teachers with ${ctc_extra_sets[$i]})"
      ctc_extra_opts+=(--extra-frame "frame_${ctc_extra_names[$i]}:${ctc_extra_sets[$i]}")
    done
    log "Stage 6 (CTC): students baseline, frame and sequence (and the extra sets' frame students), $num_seeds seeds each"
    run_logged "$exp/log/stage6_ctc_students.log" asr-kd ctc-train-students "${ctc_common[@]}" --config "$ctc_train_config" \
      --num-seeds "$num_seeds" --jobs "$nj" "${cmd_opts[@]}" ${ctc_extra_opts[@]+"${ctc_extra_opts[@]}"}
  fi
  if in_stages 7; then
    log "Stage 7 (CTC): greedy, prefix-beam and HLG decoding, each system's scale chosen on $dev_set"
    run_logged "$exp/log/stage7_ctc_decode.log" asr-kd ctc-decode "${ctc_common[@]}" --corpus "$corpus_name" \
      --decode-config "$ctc_decode_config" "${decode_beam_set[@]}"
  fi
fi

# Stage 9: asr_kd/stages/s9_deploy.py (model directories, ONNX fp32 and int8, the cost table and the int8 gate). After
# the CTC stages, so that with --model-type both the CTC students are measured in the same run as the hybrid systems.
if in_stages 9; then
  log "Stage 9: model directories, ONNX fp32 and int8, cost of ensemble vs student (deployment)"
  compressed_opts=()
  [ "$compressed_config" = none ] || compressed_opts=(--compressed-config "$compressed_config"
                                                       --compressed-train-config "${compressed_train_config:-${student_train_config:-$train_config}}")
  # shellcheck disable=SC2086  # one argument per kind
  run_logged "$exp/log/stage9_deploy.log" asr-kd deploy "${kd_common[@]}" --model-type "$model_type" --num-teachers "$num_teachers" \
    --model-config "$dnn_config" --config "${student_train_config:-$train_config}" --kd-config "$kd_config" \
    ${compressed_opts[@]+"${compressed_opts[@]}"} --uttcmvn $deploy_uttcmvn --ctc-config "$ctc_config" \
    --int8-max-relative "$int8_max_relative" --jobs "$nj" "${cmd_opts[@]}"
fi

log "Done: stages $stage to $stop_stage"
