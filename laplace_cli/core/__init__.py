"""Core: errors, enums, batches, likelihoods, uncertainty scores, version. Imports nothing else of the project."""
