#!/bin/bash
#
# Hyperparameter sweep: one task per learning rate / seed pair.
#
#SBATCH -J lr-sweep
#SBATCH -a 0-47%8
#SBATCH -o logs/sweep_%A_%a.out
#SBATCH -e logs/sweep_%A_%a.err
#SBATCH -c 4
#SBATCH --mem=16G
#SBATCH --gres=gpu:1
#SBATCH -t 04:00:00
#SBATCH -p gpu

LRS=(1e-4 3e-4 1e-3 3e-3)
LR=${LRS[$((SLURM_ARRAY_TASK_ID % 4))]}
SEED=$((SLURM_ARRAY_TASK_ID / 4))

echo "task $SLURM_ARRAY_TASK_ID of array $SLURM_ARRAY_JOB_ID: lr=$LR seed=$SEED"
python train.py --lr "$LR" --seed "$SEED" --out "runs/${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
