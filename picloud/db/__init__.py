"""Database helpers: named SQL, connections, LISTEN, storable values; no domain knowledge."""
