#!/bin/bash
#SBATCH --job-name=eval
#SBATCH --dependency=afterok:j01hx3train
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --time=30:00
#SBATCH -c 2
#SBATCH --mem=8G
#SBATCH --gpus-per-node=1

python evaluate.py --checkpoint "checkpoints/latest.pt" | tee eval.txt
