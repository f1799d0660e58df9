#!/bin/sh
#SBATCH --job-name=tokenize
#SBATCH --partition=cpu
#SBATCH --cpus-per-task=16
#SBATCH --mem-per-cpu=4G
#SBATCH --time=90
##SBATCH --time=180           (was too long for the queue)
#SBATCH --mail-type=END,FAIL
#SBATCH --mail-user=alice@example.com

module load python/3.11

python -m datasets.tokenize --workers "$SLURM_CPUS_PER_TASK" data/raw data/tokens
