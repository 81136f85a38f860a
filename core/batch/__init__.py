"""Batch mode: many clips and photo sets through FaceForge's pipelines on Ray (local or a cluster),
resumable through a ledger, each job's files written at once into its own folder.

manifest.py  jobs from a TOML/CSV manifest or a folder      ledger.py  the SQLite job ledger
runner.py    the Ray driver (retries, time limits, Ctrl+C)  worker.py  one job: the CLI in a child process
report.py    figures from each job's files, report.md / report.html
"""

from .ledger import LEDGER_NAME, Ledger, read_progress
from .manifest import JobSpec, KINDS, discover, load_jobs, read_csv, read_toml, write_toml
from .report import glb_positions, glb_summary, job_figures, write_report
from .runner import BatchOptions, BatchSummary, run_batch

__all__ = ["BatchOptions", "BatchSummary", "JobSpec", "KINDS", "LEDGER_NAME", "Ledger", "discover", "glb_positions",
           "glb_summary", "job_figures", "load_jobs", "read_csv", "read_progress", "read_toml", "run_batch",
           "write_report", "write_toml"]
