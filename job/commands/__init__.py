"""One module per `job` subcommand: parse options, call the stage's run()."""
