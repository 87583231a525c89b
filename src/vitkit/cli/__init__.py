"""Command-line interface: one small module per `vitkit` sub-command."""
