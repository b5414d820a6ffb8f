"""Example producer apps: how a host application plugs into Accolade.

Nothing in here is part of the engine. The only coupling is the call to
achievements.events.record_event inside the producer's own transaction.
"""
