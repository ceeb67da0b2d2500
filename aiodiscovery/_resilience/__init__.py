"""Policies that keep calls off bad endpoints: health checking, outlier ejection, retry rules.

They act on subchannels (:mod:`aiodiscovery._balancer`) and never on the pool that owns them.
"""
