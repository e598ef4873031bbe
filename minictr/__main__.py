from minictr.cli import entry

entry()
