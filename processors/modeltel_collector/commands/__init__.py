"""Sub-commands of the ``modeltel`` command line, one typer app per module."""
