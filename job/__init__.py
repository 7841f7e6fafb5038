"""mtbench-job: MT-bench and Japanese MT-bench as a cluster batch job.

Importing this package stays light: no torch, vllm or ray at import time.
"""

__version__ = "0.1.0"
