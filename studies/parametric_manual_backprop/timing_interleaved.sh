#!/bin/bash
# Training time of the two recipes in the same conditions, on the 22 data sets of the parametric
# quality study: for each data set the paper recipe, then the fast recipe, one process at a time,
# one thread, both models, seed 0. Run from the repository root:
#   bash studies/parametric_manual_backprop/timing_interleaved.sh [OUT_DIR]
# OUT_DIR (default: this study's results/) receives timing_paper/, timing_fast/ and timing.log.
set -e
OUT=${1:-studies/parametric_manual_backprop/results}
mkdir -p "$OUT"
SETS="4_breastw 15_Hepatitis 39_vertebral 37_Stamps 45_wine 14_glass 42_WBC 21_Lymphography 43_WDBC
47_yeast 17_InternetAds 6_cardio 35_SpamBase 25_musk 41_Waveform 38_thyroid 27_PageBlocks 19_landsat
28_pendigits 24_mnist 23_mammography 22_magic.gamma"
{ date -u; uptime; } >> "$OUT/timing.log"
for ds in $SETS; do
  for r in paper fast; do
    OMP_NUM_THREADS=1 python -m dtpm_fast evaluate --data ../shared/data/adbench/Classical \
      --out "$OUT/timing_$r" --models categorical,inverse-gamma --seeds 0 --device cpu \
      --datasets "$ds" --model-option recipe=$r >> "$OUT/timing.log" 2>&1
  done
done
{ date -u; uptime; } >> "$OUT/timing.log"
