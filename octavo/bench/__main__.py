"""`python -m octavo.bench MODE ...`: the same as `octavo bench MODE ...`, without the other
subcommands' parsers (for machines where octavo is on PYTHONPATH but not installed)."""

import argparse
import sys

from octavo.bench.cli import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="octavo bench", description="latency, throughput and serving benchmarks")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
