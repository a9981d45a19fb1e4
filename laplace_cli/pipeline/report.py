"""Evaluation reports: reliability and coverage plots (PNG) and a self-contained HTML page.

The pieces live in :mod:`laplace_cli.pipeline.report_plots` (the figures),
:mod:`laplace_cli.pipeline.report_html` (the page) and
:mod:`laplace_cli.pipeline.report_glossary` (what each term means); this module re-exports them.

matplotlib is an optional dependency (the ``plot`` extra) and is imported only when a plot is
drawn. Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, so
pyplot's global state and the user's interactive backend are never touched. Every file is
written atomically (:mod:`laplace_cli.io.atomic`: a temporary file in the destination folder,
then ``os.replace``); the folder must exist.
"""

from __future__ import annotations

from laplace_cli.pipeline.report_glossary import GLOSSARY, glossary_entry
from laplace_cli.pipeline.report_html import TABLE_HEADINGS, TABLE_TITLES, write_html_report
from laplace_cli.pipeline.report_plots import (
    figure_class,
    plot_coverage,
    plot_reliability,
    plot_risk_coverage,
)

__all__ = [
    "GLOSSARY",
    "TABLE_HEADINGS",
    "TABLE_TITLES",
    "figure_class",
    "glossary_entry",
    "plot_coverage",
    "plot_reliability",
    "plot_risk_coverage",
    "write_html_report",
]
