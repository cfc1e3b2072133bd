"""`python -m bench.perf memory|train ARGS...`: a child process of `bench.perf.processes`, one measurement each."""
import sys

from bench.perf.processes import CHILDREN

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in CHILDREN:
        CHILDREN[sys.argv[1]](sys.argv[2:])
    else:
        sys.exit(f"usage: python -m bench.perf {'|'.join(CHILDREN)} ARGS... (started by bench.perf.processes)")
