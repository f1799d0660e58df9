#!/bin/sh
# A train -> evaluate pipeline on `yard up` (run it from the checkout, with `yard` on PATH):
# a sweep of four seeds (two at a time), then one job that starts only once every trial succeeded
# and evaluates every model the sweep left (trainyard.job.dependency_artifacts fetches them).
# PYTHON: the interpreter the jobs run (one with numpy), `python` by default.
set -eu
PYTHON=${PYTHON:-python}
SWEEP=$(yard submit --name sweep --cpu 0.5 --memory 256Mi --array 0-3%2 \
    -- "$PYTHON" examples/train_tiny.py --epochs 3 --seed '{index}')
EVAL=$(yard submit --name evaluate --cpu 0.5 --memory 256Mi --after-ok "$SWEEP" \
    -- "$PYTHON" examples/eval_tiny.py)
echo "sweep $SWEEP, evaluate $EVAL"
yard get "$EVAL" | grep -E '^(Status|Pending|Depends on)' || true   # waiting for job $SWEEP (...)
yard logs -f "$EVAL"                       # each trial's accuracy, then the best
yard tasks "$SWEEP" --metric loss          # the sweep: each trial's lowest training loss
