#!/bin/bash
#SBATCH -J windows-edited
#SBATCH -c 2
#SBATCH -t 15

python run.py
