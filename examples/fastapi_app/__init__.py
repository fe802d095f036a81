"""A FastAPI app that sends aqueue tasks from async endpoints (see ``main.py``)."""
