"""How readers join, change and leave: signup and its rate limits, double opt-in, one-click unsubscribe,
the preference page's actions, export and erasure (privacy.py, shared with the operator), CSV import/export."""
