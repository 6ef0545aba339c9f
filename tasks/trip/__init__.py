"""Tasks of the trip domain, consumed from the `tasks.trip` queue."""
