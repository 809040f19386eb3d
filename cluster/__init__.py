"""How a run is driven: Ray connection, resource planning, the stage driver, checkpoints and the CLI."""
