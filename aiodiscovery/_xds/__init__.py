"""The registry as an xDS control plane: grpc core balances over etcd-registered endpoints.

Only :mod:`.policy` and :mod:`.server` are imported by the package's public face; the modules
that build or speak xDS messages (:mod:`.resources`, :mod:`.ads`) import ``xds-protos`` (the
``aiodiscovery[xds]`` extra) and are loaded when a server starts.
"""
