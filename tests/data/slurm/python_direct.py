#!/usr/bin/env python3
# fmt: off
#SBATCH --job-name=py-direct
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --time=00:20:00
"""A Python script submitted straight to sbatch: the #SBATCH lines are comments to Python."""
import os

print("task", os.environ.get("SLURM_PROCID"), "of", os.environ.get("SLURM_NTASKS"))
