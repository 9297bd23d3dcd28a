# Sourced by recipe scripts after they define their options' defaults and $help_message.
#
#   --foo-bar VALUE  or  --foo-bar=VALUE   sets the shell variable foo_bar (it must already exist,
#                                          so a misspelt option is an error, not a silent no-op)
#   --help, -h                             prints $help_message and exits 0
#   --                                     ends option parsing
#
# Parsed options are removed from the positional parameters; what is left is the caller's
# positional arguments. A variable whose default is true or false only takes true or false.
# Written for asr-kd; it follows the calling convention of Kaldi's utils/parse_options.sh.

__asr_kd_usage_error() {
  echo "$0: $1 (try --help)" >&2
  exit 1
}

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help)
      printf '%s\n' "${help_message:-No help available for $0.}"
      exit 0
      ;;
    --)
      shift
      break
      ;;
    --*=*)
      __asr_kd_opt="${1%%=*}"
      __asr_kd_val="${1#*=}"
      shift
      ;;
    --*)
      __asr_kd_opt="$1"
      [ $# -ge 2 ] || __asr_kd_usage_error "option $1 needs a value"
      __asr_kd_val="$2"
      shift 2
      ;;
    *)
      break
      ;;
  esac
  __asr_kd_name="${__asr_kd_opt#--}"
  __asr_kd_name="${__asr_kd_name//-/_}"
  case "$__asr_kd_name" in
    ""|[0-9]*|*[!a-zA-Z0-9_]*) __asr_kd_usage_error "invalid option name $__asr_kd_opt" ;;
  esac
  if ! declare -p "$__asr_kd_name" >/dev/null 2>&1; then
    __asr_kd_usage_error "unknown option $__asr_kd_opt"
  fi
  __asr_kd_old="${!__asr_kd_name}"
  if [ "$__asr_kd_old" = "true" ] || [ "$__asr_kd_old" = "false" ]; then
    case "$__asr_kd_val" in
      true|false) ;;
      *) __asr_kd_usage_error "option $__asr_kd_opt takes true or false, got '$__asr_kd_val'" ;;
    esac
  fi
  printf -v "$__asr_kd_name" '%s' "$__asr_kd_val"
done
unset __asr_kd_opt __asr_kd_val __asr_kd_name __asr_kd_old
unset -f __asr_kd_usage_error
