"""One module per benchmark; each defines ``add_arguments(parser)`` and ``run(args) -> Result``."""
