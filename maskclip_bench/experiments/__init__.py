"""Runs of many trainings: `ablate` (grids of cells, resumable; `grid_status`, `submitit_launcher` for
Slurm) and `regression` (the CI regression check behind `maskclip-bench check`)."""
