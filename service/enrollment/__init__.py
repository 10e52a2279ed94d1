"""A reader's place in a campaign: how it starts (start.py), continues into a shared sequence
(continuation.py), follows live edits of a campaign (live_edits.py), and stops: unsubscribe, bounce or
complaint, and the suppression list (suppression.py: `stop_for` is what a bounce or complaint does)."""
