"""``python -m evojax_nets.cli``: the same as the ``evojax-nets`` console script."""

from evojax_nets.cli import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
