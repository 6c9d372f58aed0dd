"""One module per heavy backend; each is imported only by the command that needs it."""
