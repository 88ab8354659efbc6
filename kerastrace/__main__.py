"""`python -m kerastrace` runs the command line."""

from kerastrace.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
