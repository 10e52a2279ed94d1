"""Read models and actions behind the console, the API and the CLI: the send log, campaign health and
charts, a reader's profile and timeline, accounts and API tokens, metrics, and `drip doctor`."""
