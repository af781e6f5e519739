"""Built-in backends, registered through the same hooks as third-party plugins."""
