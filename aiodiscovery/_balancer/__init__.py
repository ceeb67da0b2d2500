"""One endpoint's connection and the choice among them: subchannels, pickers, call objects.

Knows nothing of etcd: it imports the codec (endpoint metadata for weights) and the root's leaves.
"""
