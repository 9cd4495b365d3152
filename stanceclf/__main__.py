"""``python -m stanceclf``: the same command line as ``stanceclf``."""

from stanceclf.cli import main

if __name__ == "__main__":
    main()
