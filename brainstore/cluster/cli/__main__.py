"""``python -m brainstore.cluster.cli``: the ``brainstore`` command."""

from . import main

if __name__ == "__main__":  # pragma: no cover
    main()
