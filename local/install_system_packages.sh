#!/usr/bin/env bash
# Installs the optional system packages: for the synthetic corpus, Festival with its two American
# English diphone voices (a second synthesiser family beside espeak-ng) and WordNet's data (a
# second text source); for recipes/mnist's Fashion-MNIST preset, Debian's dataset-fashion-mnist
# (/usr/share/datasets/fashion-mnist; its tests skip, saying so, without it). Runs apt-get when it
# can (root and apt available); otherwise prints one line saying what will be missing. Never
# fails: the corpus builds with espeak-ng and essential-generators' text alone and says so in its
# log and SYNTHETIC.json.
#
# Never installed here, on purpose: Debian's flite and voices built from the CMU ARCTIC recordings
# (festvox-us-slt-hts, cmu_us_*): they are reserved for evaluation. --no-install-recommends keeps
# apt from pulling another voice in through festival's "Recommends: festival-voice".
set -u
packages=(festival festvox-kallpc16k festvox-kdlpc16k wordnet-base dataset-fashion-mnist)

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  echo "usage: $0   (as root: apt-get install ${packages[*]}; otherwise says what is missing)"
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (apt-get): the synthetic corpus's second synthesiser family and text source, Fashion-MNIST"
  if { apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
       || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; }; }; then
    exit 0
  fi
  echo "note: apt-get could not install ${missing[*]}; the synthetic corpus will do without Festival and WordNet, recipes/mnist without Fashion-MNIST" >&2
  exit 0
fi
echo "note: ${missing[*]} not installed (needs root and apt-get: sudo $0); the synthetic corpus will do without them (espeak-ng, essential-generators), recipes/mnist without Fashion-MNIST" >&2
exit 0
