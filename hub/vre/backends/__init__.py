"""Session backends: each renders a SessionPlan into its own terms and nothing else."""
