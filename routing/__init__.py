"""routing: the directory, the extension resolver, call flows, the assembled server and the CLI."""

__all__: list[str] = []
