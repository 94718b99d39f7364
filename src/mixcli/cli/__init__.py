"""The `mix` command line: one module per subcommand, built into one Typer app in app.py."""
