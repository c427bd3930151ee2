"""``python -m lsio_torch.bench``: see :mod:`lsio_torch.bench`."""

from lsio_torch.bench import main

main()
