# Sourced by recipe scripts: logging, stage guards and completion markers.

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

# is_done DIR: true when DIR holds a .done marker (written only after the work succeeded).
is_done() {
  [ -f "$1/.done" ]
}

# mark_done DIR: record that the work writing DIR finished.
mark_done() {
  mkdir -p "$1"
  date '+%Y-%m-%d %H:%M:%S' > "$1/.done"
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

# run_marked_stage N NAME DESCRIPTION DIR CMD...: within --stage .. --stop-stage, run CMD (logged
# to DIR/log/stageN_NAME.log) unless DIR/stages/NAME/.done exists; mark it done after success.
run_marked_stage() {
  local n="$1" name="$2" desc="$3" dir="$4"
  shift 4
  in_stages "$n" || return 0
  if is_done "$dir/stages/$name"; then
    log "Stage $n ($name): finished before ($dir/stages/$name/.done), skipping"
    return 0
  fi
  log "Stage $n ($name): $desc"
  run_logged "$dir/log/stage${n}_$name.log" "$@"
  mark_done "$dir/stages/$name"
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
