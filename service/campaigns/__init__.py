"""Campaign definitions (model.py), how they are loaded and checked from `email_templates/` (loader.py),
and the calendar arithmetic of when a step is due (schedule.py: `step_due` is the one next-due-time rule)."""
