"""The etcd boundary: member URLs, TLS, authentication, failover between members, raw requests.

:mod:`.watch` holds the resilient prefix watch and the hub that shares one per
prefix per client; the client owns the hub, so the two live together. Imports the codec and the
root's leaves, never anything above.
"""
