"""The client's side: ``BalancedChannel``/``resolve()`` and the pool that runs it.

The top of the house: it joins the naming layer (what endpoints exist) with selection (which to
hold), the balancer (how to pick) and resilience (what to avoid). Nothing below imports it.
"""
