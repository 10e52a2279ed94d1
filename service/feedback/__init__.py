"""What comes back after a message leaves: provider webhooks (verified by webhook_auth.py, parsed by
provider_events.py), bounce emails (dsn.py), opens and clicks, all as one `DeliveryEvent` whose effect
delivery.py applies."""
