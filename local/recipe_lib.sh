# Sourced by recipe scripts: logging, stage selection and logged commands. Whether a stage's
# work is skipped or redone is decided by its provenance record in Python (asr_kd/stages/provenance.py).

# The --help paragraph of recipes whose stages keep provenance.json in $exp/<name>/ (recipes/mnist,
# recipes/specialists; the decision itself: asr_kd/experiments/stage_records.py).
stage_records_help='Each writes into $exp/<name>/ and, when it finishes, provenance.json there: the
settings it ran with (the config fields it reads), the fingerprints of the records of the stages
it reads and of its outputs. A stage is skipped only when that record matches what it would run
with now; otherwise it is redone (--on-change redo) or stops naming the differing keys
(--on-change stop), and the stages after it see the changed fingerprint and follow. A copied
$exp (cp -r) matches as it is. Delete $exp/<name>/provenance.json to redo a stage.'

# log MESSAGE...: a timestamped line on stderr naming the script and line.
log() {
  local caller="${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}"
  printf '%s (%s) %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$caller" "$*" >&2
}

# die MESSAGE...: log and exit 1.
die() {
  log "ERROR: $*"
  exit 1
}

# in_stages N: true when stage N lies within --stage .. --stop-stage.
in_stages() {
  [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]
}

# run_logged LOGFILE CMD...: run CMD, its output shown and kept in LOGFILE; fail if CMD fails.
run_logged() {
  local logfile="$1"
  shift
  mkdir -p "$(dirname "$logfile")"
  {
    printf '# %s\n# started %s\n' "$*" "$(date '+%Y-%m-%d %H:%M:%S')"
  } > "$logfile"
  if "$@" 2>&1 | tee -a "$logfile"; then
    printf '# ended %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" >> "$logfile"
    __asr_kd_tidy_log "$logfile"
  else
    local rc=${PIPESTATUS[0]}
    __asr_kd_tidy_log "$logfile"
    log "ERROR: '$*' failed with status $rc; see $logfile"
    exit "$rc"
  fi
}

# run_stage_logged N NAME DESCRIPTION LOGDIR CMD...: within --stage .. --stop-stage, run CMD,
# logged to LOGDIR/stageN_NAME.log. CMD itself skips, redoes or refuses the stage by its record.
run_stage_logged() {
  local n="$1" name="$2" desc="$3" logdir="$4"
  shift 4
  in_stages "$n" || return 0
  log "Stage $n ($name): $desc"
  run_logged "$logdir/stage${n}_$name.log" "$@"
}

# The terminal sees progress bars move; the log keeps only each line's final state.
__asr_kd_tidy_log() {
  sed -i 's/.*\r//' "$1" 2>/dev/null || true
}

# Make the project's virtual environment's asr-kd reachable when it is not on PATH already.
__asr_kd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v asr-kd >/dev/null 2>&1 && [ -x "$__asr_kd_root/.venv/bin/asr-kd" ]; then
  PATH="$__asr_kd_root/.venv/bin:$PATH"
  export PATH
fi
unset __asr_kd_root
