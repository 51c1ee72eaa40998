#!/bin/bash
# paper and fast recipe alternate data set by data set, one process at a time, one thread
cd /work/wt18
for ds in 14_glass 6_cardio 38_thyroid; do
 for r in paper fast; do
  OMP_NUM_THREADS=1 python -m dtpm_fast.cli evaluate --data /work/shared/data/adbench/Classical --out studies/parametric_fast_recipe/results/timing_$r \
   --models categorical,inverse-gamma --seeds 0 --device cpu --datasets $ds --model-option recipe=$r >> studies/parametric_fast_recipe/results/timing.log 2>&1
 done
done
