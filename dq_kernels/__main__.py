"""``python -m dq_kernels ...``: the same command line as ``dq-kernels``."""

from dq_kernels.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
