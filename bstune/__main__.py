"""``python -m bstune``: the ``bstune`` command, for an environment whose scripts are not on PATH."""

from bstune.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
