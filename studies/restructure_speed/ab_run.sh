#!/bin/bash
# A/B of the regression suite: restructured tree (main) against 8bee99f (old), interleaved.
source /work/venv/bin/activate
for round in 1 2 3; do
  for side in main old; do
    root=/work/main; [ $side = old ] && root=/work/wt-old
    ( cd /work/main && PYTHONPATH=$root/python python -m pytest bench/test_bench_end_to_end.py bench/test_bench_kernels.py -q -p no:cacheprovider --bench-size small -k "dtpm or posterior or neighbour" --benchmark-json=/tmp/ab/${side}_${round}.json > /tmp/ab/${side}_${round}.log 2>&1 )
    uptime >> /tmp/ab/load.txt
  done
done
