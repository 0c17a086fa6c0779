"""``python -m benchmarks [--quick] [--out DIR] [--only PATTERN] [--threads N]``: the suite."""

from benchmarks.suite import main

if __name__ == "__main__":
    main()
