# Sourced by scripts/fuzz.sh and scripts/soak.sh: `seconds_of WHAT DURATION` prints DURATION
# (seconds, or with a suffix: 90s, 10m, 1h) in seconds, or exits 64 naming WHAT.
seconds_of() {
  local what=$1 d=$2 s
  case "$d" in
    *h) s=${d%h}; [[ "$s" =~ ^[0-9]+$ ]] && s=$((s * 3600));;
    *m) s=${d%m}; [[ "$s" =~ ^[0-9]+$ ]] && s=$((s * 60));;
    *s) s=${d%s};;
    *) s=$d;;
  esac
  [[ "$s" =~ ^[0-9]+$ && "$s" -gt 0 ]] || { echo "$what: DURATION must be seconds, or 90s, 10m, 1h; got '$d'" >&2; exit 64; }
  echo "$s"
}
