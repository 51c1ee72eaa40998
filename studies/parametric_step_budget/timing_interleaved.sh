#!/bin/bash
# Training time of the two recipes in the same conditions: for each data set, the paper recipe
# then the fast recipe, one process at a time, one thread, both models, seed 0.
# Run from the repository root: bash studies/parametric_step_budget/timing_interleaved.sh
set -e
OUT=studies/parametric_step_budget/results
for ds in 14_glass 6_cardio 35_SpamBase 27_PageBlocks 22_magic.gamma; do
  for r in paper fast; do
    OMP_NUM_THREADS=1 python -m dtpm_fast evaluate --data ../shared/data/adbench/Classical \
      --out "$OUT/timing_$r" --models categorical,inverse-gamma --seeds 0 --device cpu \
      --datasets "$ds" --model-option recipe=$r >> "$OUT/timing.log" 2>&1
  done
done
