"""`python -m benchapp.run WORKLOAD KEY OUT`: the function as a pheanq command runs it, in a fresh interpreter."""

from __future__ import annotations

import sys

from benchapp.work import WORKLOADS

if __name__ == "__main__":
    workload, key, out = sys.argv[1:4]
    WORKLOADS[workload](key, out)
