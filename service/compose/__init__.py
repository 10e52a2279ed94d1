"""A campaign step becomes signed MIME bytes: rendering (composer.py, render_plan.py), the MIME writer,
DKIM signing, tracked links, the "as sent" copies, and the content lint."""
