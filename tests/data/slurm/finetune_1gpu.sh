#!/bin/bash -l
# Fine-tune BERT on one GPU.
#SBATCH --job-name bert-finetune
#SBATCH --gpus=1
#SBATCH --mem=32000
#SBATCH -t 0-12:00
#SBATCH --qos=normal
##SBATCH --exclusive
#SBATCH --requeue

source ~/.bashrc
conda activate nlp

cd "$SLURM_SUBMIT_DIR"
python finetune.py --model bert-base-uncased --epochs 3
