#!/usr/bin/env bash
# ---------------------------------------------------------------------------
#  Slurm settings
# ---------------------------------------------------------------------------
#SBATCH --job-name=vit-pretrain
#SBATCH --account=vision
#SBATCH --gpus-per-task=2
#SBATCH --ntasks=2
#SBATCH --cpus-per-gpu=8
#SBATCH --mem-per-gpu=40G
#SBATCH --time=2-00:00:00
#SBATCH --export=ALL,WANDB_MODE=offline,HF_HUB_OFFLINE=1
#SBATCH --chdir=/scratch/alice/vit
# ---------------------------------------------------------------------------

eval "$(conda shell.bash hook)"
conda activate vit

srun python pretrain.py
