"""Edge side of splitfc: run the model head, encode features, send, report."""
