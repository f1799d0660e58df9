#!/bin/bash
#SBATCH --job-name=late
# SBATCH --gres=gpu:1        (a space after '#': not a directive)

cd "$SLURM_SUBMIT_DIR"
#SBATCH --time=01:00:00     (after the first command: sbatch ignores it)
#SBATCH --mem=64G

python train.py
