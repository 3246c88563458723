"""What flows: the canonical return event, topics, codecs, state, and the pure rules over them.

Nothing in this package does I/O.
"""
