"""The Monte-Carlo Fisher's sampling, at its former path (now laplace_cli/fisher/mc_fisher.py)."""

from laplace_cli.fisher.mc_fisher import sample_targets, sampled_output_gradients

__all__ = ["sample_targets", "sampled_output_gradients"]
