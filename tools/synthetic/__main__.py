"""``python -m tools.synthetic --out DIR --seed N [--quick] [--workers W]``: write a mini Aff-Wild2.

The flags live in ``tools.synthetic.cli`` (importable by tests without running anything).
"""

from tools.synthetic.cli import main

if __name__ == "__main__":
    main()
