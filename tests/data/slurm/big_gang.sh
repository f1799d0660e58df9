#!/bin/bash
#SBATCH --job-name=gpt-pretrain
#SBATCH --nodes=16
#SBATCH --gpus-per-node=h100:8
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=1600G
#SBATCH --time=UNLIMITED
#SBATCH --qos=urgent
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=/checkpoint/%u/logs/%j.out

srun --cpu-bind=none --ntasks-per-node=8 python pretrain.py --resume auto
