"""What a gRPC server of the service runs beside its handlers: load reports (ORCA).

Knows nothing of etcd nor of the client side: it imports the root's leaves only.
"""
