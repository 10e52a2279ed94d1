"""The ground floor: settings, the database engine and tables, the append-only history, signed tokens,
addresses and Message-IDs, DKIM keys, and the one rule for what an SMTP status says about a mailbox.
It imports nothing else of Drip; every other stage builds on it."""
