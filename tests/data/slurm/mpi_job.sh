#!/bin/bash
#SBATCH --job-name=lammps_bench
#SBATCH --nodes=2
#SBATCH --ntasks=8
#SBATCH --mem-per-cpu=2000
#SBATCH --time=4:00:00
#SBATCH --constraint=ib
#SBATCH --account=chem-lab
#SBATCH --partition=Compute

module load openmpi/4.1 lammps

srun --mpi=pmix lmp -in in.lj
