"""The HTML report of a results folder: the paper's figures and tables, and a map viewer.

    from vlmflow.report import build_report

    build_report("results")   # results/report.html and results/figures/*.png

The report reads `results.sqlite3` (what `vlmflow run` writes), draws one section per
experiment found there, lists the failed items and the runs' configurations, and embeds an
interactive viewer of the `maps` results. It opens from the file system with no network.
Figures need matplotlib (`pip install 'vlmflow[report]'`); importing this package does not.
"""

from vlmflow.report.build import REPORT_FILE, build_report

__all__ = ["REPORT_FILE", "build_report"]
