"""The CLI options' shared settings: case-insensitive choices and the `--help` panel titles
that group options (see `laplace_cli.cli.options`)."""

CHOICE = {"case_sensitive": False}
INPUTS = "Inputs"
FIT = "Fitting"
PRED = "Prediction"
MODEL = "Model"
OUT = "Output"
RUN = "Execution"
