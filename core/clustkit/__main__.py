"""``python -m clustkit`` (what ``torchrun -m clustkit run ...`` starts on each process)."""

from clustkit.cli import main

main()
