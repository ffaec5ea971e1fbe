"""HTTP routes of the queen: thin handlers that parse, call the domain, shape the answer."""
