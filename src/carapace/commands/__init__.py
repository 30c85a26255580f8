"""The ``carapace`` command line's commands, loaded lazily by ``carapace.cli``: the top floor,
which may import every other floor (it builds the host and hands it the admin verbs)."""
