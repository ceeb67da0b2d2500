"""Which endpoints a client may and will use: address policy, admission, subsets, zones, and the
guard against a mass removal. Pure decisions over endpoint sets; no I/O."""
