#!/bin/bash
#SBATCH -N 1
#SBATCH --ntasks-per-node=4        # Lightning wants one task per GPU
#SBATCH --gres=gpu:v100:4
#SBATCH --cpus-per-task=6
#SBATCH --mem=0
#SBATCH --time=08:00:00
#SBATCH --signal=SIGUSR1@90        # Lightning requeues itself on this signal

# debugging flags (optional)
export NCCL_DEBUG=INFO
export PYTHONFAULTHANDLER=1

srun python train_lightning.py --trainer.devices 4 --trainer.num_nodes 1
