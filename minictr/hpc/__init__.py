"""HPC integration: Slurm allocations and the OCI runtime CLI."""
