"""The pass: queue what is due, claim it with a lease, send it, record what happened, retry; plus the
sending pause, per-domain send limits and history retention. dispatcher.py is the long-lived worker;
each pass builds its own per-pass objects."""
