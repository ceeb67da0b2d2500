"""etcd's naming API in Python: the endpoints manager and the live endpoint set (``Watcher``).

Built on the etcd boundary and the codec; the registrar and the pool build on it.
"""
