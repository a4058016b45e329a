"""`python -m metrix` (and `torchrun -m metrix`) runs the CLI."""

from metrix.cli import main

main()
