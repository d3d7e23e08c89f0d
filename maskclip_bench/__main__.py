"""`python -m maskclip_bench` (used under torchrun)."""
import sys

from maskclip_bench.cli import main

main(sys.argv[1:])
