"""The registry as an xDS control plane: grpc core balances over etcd-registered endpoints.

The package's public face imports :mod:`.policy`, :mod:`.stats`, :mod:`.server` and
:mod:`.local`, which need nothing beyond grpcio; the modules that build or speak xDS messages
(:mod:`.resources`, :mod:`.catalog`, :mod:`.ads`) import ``xds-protos`` (the
``aiodiscovery[xds]`` extra) and are loaded when a server starts.
"""
