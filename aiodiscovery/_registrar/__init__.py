"""A server's side: leases kept alive, keys kept written, registration gated on server health."""
