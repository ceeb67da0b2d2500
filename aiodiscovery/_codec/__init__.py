"""The registry's data: endpoints, their JSON record byte-compatible with etcd's Go client, keys.

The bottom of the house: it imports only the root's leaves (``_exceptions``). Everything else reads
and writes the registry through it.
"""
