"""The ``erniem-np`` subcommands, one module each (see ``_common`` for what they share)."""
