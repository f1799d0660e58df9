#!/bin/bash
#SBATCH -J quick -c4 -n 1 -t 5 -p debug -q debug
#SBATCH -o out.txt -e err.txt
#SBATCH --time=00:10:00   # ten minutes after all
#SBATCH -N1

hostname
srun -n 1 python -c 'print("hello from srun")'
