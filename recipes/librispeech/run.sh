#!/usr/bin/env bash
# The main asr-kd recipe: LibriSpeech (or the synthetic offline corpus in its layout) from
# audio to distilled acoustic models. Run ./run.sh --help for the stages and options.
set -euo pipefail

recipe_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root_dir="$(cd "$recipe_dir/../.." && pwd)"

# ---- options (every one has its default here, before parsing) -------------------------------
stage=0
stop_stage=2
corpus_dir=""          # an existing LibriSpeech folder (holding train-clean-100/ ...); empty: synthetic
download=false         # true: download LibriSpeech with lhotse into $data/download (needs internet)
preset=mini            # synthetic corpus size: tiny | mini | small
seed=0                 # synthetic corpus seed
difficulty=1.0         # synthetic corpus noise/reverberation level, 0 (clean) .. 3
train_set=train-clean-100
dev_set=dev-clean
test_set=test-clean
lexicon=""             # LibriSpeech's librispeech-lexicon.txt; empty: CMUdict
nj=2                   # parallel jobs
data="$recipe_dir/data"
exp="$recipe_dir/exp"
feature_config="$recipe_dir/conf/features.yaml"
lang_config="$recipe_dir/conf/lang.yaml"

help_message="Usage: $0 [options]

Stages (a finished stage is skipped: its output folder holds a .done marker; delete the marker
to redo it):
  0  corpus: the synthetic LibriSpeech-layout corpus (default, offline), an existing LibriSpeech
     folder (--corpus-dir) or a download (--download true) -> lhotse manifests in \$data/manifests
  1  features: 40-dim log-mel fbank (networks) and 13-dim MFCC (GMMs), lilcom storage, CMVN
     statistics -> \$data/fbank, \$data/mfcc
  2  lang: lexicon (--lexicon, else CMUdict), phones, words, L.fst, L_disambig.fst, a 3-gram LM
     trained on the training transcripts -> G.fst, in \$data/lang

Options (default in brackets):
  --stage N            first stage to run [$stage]
  --stop-stage N       last stage to run [$stop_stage]
  --corpus-dir DIR     existing LibriSpeech folder; empty means the synthetic corpus [$corpus_dir]
  --download BOOL      download LibriSpeech with lhotse into \$data/download [$download]
  --preset NAME        synthetic corpus size: tiny, mini or small [$preset]
  --seed N             synthetic corpus seed [$seed]
  --difficulty X       synthetic corpus difficulty, 0 (clean) to 3 [$difficulty]
  --train-set NAME     training part [$train_set]
  --dev-set NAME       development part [$dev_set]
  --test-set NAME      test part [$test_set]
  --lexicon FILE       pronunciation lexicon in LibriSpeech's format; empty means CMUdict [$lexicon]
  --nj N               parallel jobs [$nj]
  --data DIR           data folder [$data]
  --exp DIR            experiment folder (logs, models) [$exp]
  --feature-config F   FeatureConfig YAML [$feature_config]
  --lang-config F      LangConfig YAML [$lang_config]
  -h, --help           show this help

Examples:
  $0                                   # stages 0-2 on the synthetic 'mini' corpus
  $0 --corpus-dir /data/LibriSpeech    # real LibriSpeech
  $0 --stage 1 --stop-stage 1          # only features
"

. "$root_dir/local/parse_options.sh"
. "$root_dir/local/recipe_lib.sh"

[ $# -eq 0 ] || { echo "$0: unexpected argument '$1' (try --help)" >&2; exit 1; }
case "$stage$stop_stage" in *[!0-9]*) echo "$0: --stage and --stop-stage take integers" >&2; exit 1 ;; esac
command -v asr-kd >/dev/null 2>&1 || die "asr-kd is not installed: run 'make venv' in $root_dir (or activate its .venv)"

mkdir -p "$exp/log"
# Record how this run was invoked, Kaldi style.
printf '%s\n' "$0 $*" "stage=$stage stop_stage=$stop_stage corpus_dir=$corpus_dir download=$download preset=$preset seed=$seed difficulty=$difficulty train_set=$train_set dev_set=$dev_set test_set=$test_set lexicon=$lexicon nj=$nj data=$data exp=$exp" \
  > "$exp/log/run.$(date '+%Y%m%d-%H%M%S').options"

parts=("$train_set" "$dev_set" "$test_set")

if in_stages 0; then
  if is_done "$data/manifests"; then
    log "Stage 0: manifests exist ($data/manifests/.done), skipping"
  else
    if [ -n "$corpus_dir" ]; then
      log "Stage 0: LibriSpeech from $corpus_dir"
      src="$corpus_dir"
    elif [ "$download" = true ]; then
      log "Stage 0: downloading LibriSpeech parts ${parts[*]}"
      run_logged "$exp/log/stage0_download.log" asr-kd download-librispeech --target-dir "$data/download" --parts "${parts[@]}"
      src="$data/download/LibriSpeech"
    else
      src="$data/corpus"
      if is_done "$src"; then
        log "Stage 0: synthetic corpus exists ($src/.done)"
      else
        log "Stage 0: synthesising the '$preset' corpus (seed $seed, difficulty $difficulty) in $src"
        run_logged "$exp/log/stage0_synth.log" asr-kd synth-corpus --output-dir "$src" --preset "$preset" \
          --seed "$seed" --difficulty "$difficulty" --num-jobs "$nj"
        mark_done "$src"
      fi
    fi
    log "Stage 0: lhotse manifests"
    run_logged "$exp/log/stage0_manifests.log" asr-kd prepare-manifests --corpus-dir "$src" \
      --output-dir "$data/manifests" --parts "${parts[@]}" --num-jobs "$nj"
    mark_done "$data/manifests"
  fi
fi

if in_stages 1; then
  if is_done "$data/fbank" && is_done "$data/mfcc"; then
    log "Stage 1: features exist, skipping"
  else
    log "Stage 1: fbank and MFCC features"
    run_logged "$exp/log/stage1_features.log" asr-kd compute-features --manifest-dir "$data/manifests" \
      --output-dir "$data" --parts "${parts[@]}" --config "$feature_config" --set "num_jobs=$nj"
    mark_done "$data/fbank"
    mark_done "$data/mfcc"
  fi
fi

if in_stages 2; then
  if is_done "$data/lang"; then
    log "Stage 2: lang exists ($data/lang/.done), skipping"
  else
    log "Stage 2: lexicon, L.fst, language model, G.fst"
    lexicon_opt=()
    [ -z "$lexicon" ] || lexicon_opt=(--lexicon "$lexicon")
    run_logged "$exp/log/stage2_lang.log" asr-kd prepare-lang --manifest-dir "$data/manifests" \
      --output-dir "$data/lang" --train-split "$train_set" --dev-split "$dev_set" --splits "${parts[@]}" \
      --config "$lang_config" "${lexicon_opt[@]}"
    mark_done "$data/lang"
  fi
  asr-kd data-summary --manifest-dir "$data/manifests" --lang-dir "$data/lang" --parts "${parts[@]}"
fi

log "Done: stages $stage to $stop_stage"
