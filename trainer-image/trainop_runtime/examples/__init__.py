"""Example training programs that use the runtime."""
