"""Qt Designer forms, loaded at run time."""
