"""HTTP only: parse, call core, shape the reply. The only room that knows status codes."""
