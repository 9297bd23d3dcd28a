#!/usr/bin/env bash
# The project's GPU checks in one run (issue 14, item 5), for a machine with one NVIDIA GPU:
#   1. bench/dnn_gpu.py: the paper's DNN trained in bf16, eager and torch.compile, share of peak FLOP/s;
#   2. bench/stage5_speed.py: stage 5 (the teachers' inference over the training set and the stored
#      soft targets) in frames per second;
#   3. bench/loader_speed.py --decode-device cuda: what a loader worker feeds the GPU, and the
#      students' rvq codes decoded on the GPU;
#   4. a CUDA training smoke test: stages 4-7 of the `tiny` recipe, hybrid and CTC, on an experiment
#      folder that stages 0-3 made elsewhere (a CPU machine); every network trains on the GPU
#      (train.device auto), and so does the networks' scoring, hybrid and CTC (run.sh --device auto).
#      Its soft targets are rvq codes (bench/gpu_tiny_kd.yaml), so stage 5's per-cut work and the
#      students' decoding run on the GPU too. Its RESULTS.md and its exp folder come back, to compare
#      with the same stages run on the CPU with the same --kd-config (bench/compare_runs.py).
# Each part has its own time limit and a failed part does not stop the next. The limits add up to
# 690 s, more than one device call may run (600 s) and than a session's 15 minutes allow with the
# start: GPU_CHECKS_PARTS names the parts to run (default all: cuda_tests dnn_gpu stage5_speed
# loader_speed tiny); a session that has the DNN's and stage 5's numbers runs the others.
#
# Before them, tests/unit/test_cuda.py (the GPU's stage-5 targets and CTC log-probabilities against the CPU's).
#
# Usage, from the repository root of a copy of the tree:
#   bench/gpu_checks.sh OUT [TINY]
# OUT: a folder for what comes back (bench sections in OUT/RESULTS.md, logs, OUT/tiny_exp.tgz);
# TINY: a folder holding data/ and exp/ of a tiny run after stage 3, whose manifests name it by
# the absolute path they were made at (pass that path; bench/gpu_checks.sh does not move it).
# A tree copied without .git must name its commit: ASR_KD_CODE_VERSION="git <commit>".
# Python: `python3` with torch; asr-kd need not be installed (the tree's root goes on PYTHONPATH,
# and an `asr-kd` command that runs `python3 -m asr_kd` is put on PATH when there is none).
set -u
out=${1:?usage: bench/gpu_checks.sh OUT [TINY]}
tiny=${2:-}
parts=${GPU_CHECKS_PARTS:-cuda_tests dnn_gpu stage5_speed loader_speed tiny}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -z "$tiny" ] || tiny=$(cd "$tiny" && pwd)
# Without .git (a copied tree) the stage records and bench sections name the commit from here.
[ -d "$root/.git" ] || : "${ASR_KD_CODE_VERSION:?set ASR_KD_CODE_VERSION to 'git <commit>' of the copied tree}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if ! command -v asr-kd >/dev/null 2>&1; then
  mkdir -p "$out/.bin"
  printf '#!/bin/sh\nexec python3 -m asr_kd "$@"\n' > "$out/.bin/asr-kd"
  chmod +x "$out/.bin/asr-kd"
  export PATH="$out/.bin:$PATH"
fi
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log its status
  local name=$1 limit=$2; shift 2
  echo "=== $name: start $(date -u +%T), limit ${limit}s: $*"
  local t0=$SECONDS
  timeout "$limit" "$@"
  echo "=== $name: exit $? after $((SECONDS - t0))s"
}
cd "$root"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, asr_kd; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

wanted() { case " $parts " in *" $1 "*) return 0 ;; esac; return 1; }
wanted cuda_tests && part cuda_tests 60 python3 -m pytest -q -p no:cacheprovider tests/unit/test_cuda.py
wanted dnn_gpu && part dnn_gpu 140 python3 bench/dnn_gpu.py --modes eager compile --utts 32 64 --steps 50 --warmup 10 --results "$out/RESULTS.md"
wanted stage5_speed && part stage5_speed 120 python3 bench/stage5_speed.py --device cuda --cuts 64 --rounds 2 --results "$out/RESULTS.md"
wanted loader_speed && part loader_speed 120 python3 bench/loader_speed.py --num-classes 4200 --formats hard rvq rvq-codes --rounds 2 \
  --decode-device cuda --results "$out/RESULTS.md"

if [ -n "$tiny" ] && wanted tiny; then
  (cd recipes/librispeech &&
    part tiny_stages_4_7 250 ./run.sh --preset tiny --model-type both --stage 4 --stop-stage 7 --nj 8 \
      --kd-config "$root/bench/gpu_tiny_kd.yaml" \
      --data "$tiny/data" --exp "$tiny/exp" --results "$out/tiny_RESULTS.md" > "$out/tiny_run.log" 2>&1)
  tail -5 "$out/tiny_run.log"
  tar -czf "$out/tiny_exp.tgz" -C "$tiny" --exclude='*.lca' --exclude='*.npa' --exclude='*.pt' --exclude='checkpoints' exp
fi
rm -rf "$out/.bin"
